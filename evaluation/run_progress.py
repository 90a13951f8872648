"""How far the run of the evaluated weights had trained: an evaluation of a run folder whose training stopped
early reads its latest checkpoint, and its result must say so.

``run_progress(spec)`` reads the folder of the ``backbone.safetensors`` that ``common.backbones.load_backbone``
loads for ``spec``: a training checkpoint (``checkpoints/step_<N>/``) gives the step of its ``state.pt`` and the
run's total steps; a run folder's final ``backbone.safetensors`` gives the ``steps`` of its ``results.json``
(a finished run). A model name or a file outside a run has no progress (None).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from common.backbones import is_model_name, read_backbone_config
from common.checkpoint import STATE_FILE, load_checkpoint


@dataclass(frozen=True)
class RunProgress:
    step: int  # the optimiser step the weights were saved at
    total_steps: int | None  # the run's planned steps; None for a checkpoint saved before they were recorded
    finished: bool

    def describe(self) -> str:
        total = "?" if self.total_steps is None else self.total_steps
        return f"step {self.step} of {total}"


def _final_steps(run_folder: Path) -> int | None:
    """The ``steps`` of a finished run's ``results.json``; None without one."""
    try:
        return int(json.loads((run_folder / "results.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_progress(spec: str) -> RunProgress | None:
    """The training progress of the weights ``spec`` names (module docstring); None when nothing tells it."""
    if is_model_name(spec) or not Path(spec).exists():  # a missing path is the loader's error to name
        return None
    folder = read_backbone_config(spec)[2].parent
    if (folder / STATE_FILE).is_file():
        state = load_checkpoint(folder)
        step, total = int(state["step"]), state.get("total_steps")
        if total is None:  # an older checkpoint: finished only if its run's results were written at this step
            return RunProgress(step, None, _final_steps(folder.parent.parent) == step)
        return RunProgress(step, int(total), step >= int(total))
    steps = _final_steps(folder)
    return None if steps is None else RunProgress(steps, steps, True)


def announce_progress(spec: str, doing: str) -> RunProgress | None:
    """``run_progress(spec)``, and a warning on stderr when the run is unfinished (``doing``: "evaluating")."""
    progress = run_progress(spec)
    if progress is not None and not progress.finished:
        print(f"warning: '{spec}' is an unfinished run: {doing} its checkpoint at {progress.describe()}",
              file=sys.stderr)
    return progress
