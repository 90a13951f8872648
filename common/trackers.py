"""The experiment trackers a run can log to (``tracker=``): every one Hugging Face Accelerate supports, each an
optional extra of the project (``pip install 'ssl-repro[wandb]'``), and the same tracker run after a resume.

A resumed or requeued run continues the tracker run it started: the trainer keeps ``tracker_run_id`` (Weights &
Biases' run id, MLflow's run id, Aim's run hash, Comet's experiment key) in its checkpoints and hands it back to the
tracker on resume. ClearML and DVCLive have no run id to continue: a resume of theirs starts a new tracker run
(DVCLive appends to its folder's metrics). TensorBoard writes events under ``<output_dir>/train``, which a resume
appends to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from common.errors import ConfigError

# tracker -> (the Python module it needs, the extra of pyproject.toml that installs it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
}


def check_tracker(name: str) -> None:
    """A ``ConfigError`` naming the extra to install when the tracker's package is missing."""
    if name == "none":
        return
    module, extra = TRACKER_PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"tracker={name} needs the '{module}' package: pip install 'ssl-repro[{extra}]' "
                          "(or tracker=tensorboard / none)")


def _continue_kwargs(name: str, run_id: str | None) -> dict[str, Any]:
    """The tracker's own arguments that reopen the run ``run_id`` (a new run when it is None)."""
    if name == "wandb":
        return {"id": run_id, "resume": "allow"} if run_id else {}
    if name == "mlflow":
        return {"run_id": run_id} if run_id else {}
    if name == "aim":
        return {"run_hash": run_id} if run_id else {}
    if name == "comet_ml":
        return {"experiment_key": run_id} if run_id else {}
    return {}


def start_tracker(accelerator: Accelerator, name: str, project: str, output_dir: Path, config: dict[str, Any],
                  run_id: str | None) -> str | None:
    """Start the tracker (every process calls it; Accelerate starts it on the main process) and return its run
    id on the main process: the one given (a resumed run) or the new run's."""
    if name == "none":
        return None
    if name == "tensorboard":
        # events under <output_dir>/train, which common.checkpoint knows as a run's files; no hyper-parameters:
        # TensorBoard's hparams plugin would add an event file at every start
        accelerator.init_trackers("train")
        return None
    kwargs = _continue_kwargs(name, run_id)
    run_name = output_dir.resolve().name  # the run folder's name names the tracker run
    if name == "wandb":
        kwargs["name"] = run_name
    elif name == "mlflow":
        kwargs["run_name"] = run_name
    # the config once, when the tracker run starts: a resume may change a resumable key (resume=auto), and MLflow
    # refuses to change a logged parameter
    accelerator.init_trackers(project, config=flat_config(config) if run_id is None else None,
                              init_kwargs={name: kwargs})
    if not accelerator.is_main_process:
        return None
    return tracker_run_id(accelerator, name)


def tracker_run_id(accelerator: Accelerator, name: str) -> str | None:
    """The started tracker run's id (main process), ``None`` for trackers that have none to continue."""
    run = accelerator.get_tracker(name, unwrap=True)
    if name == "wandb":
        return run.id
    if name == "mlflow":
        return run.info.run_id
    if name == "aim":
        return run.hash
    if name == "comet_ml":
        return run.get_key()
    return None


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.3}}`` -> ``{"optim.lr": 0.3}``; lists become text (trackers take scalars)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat
