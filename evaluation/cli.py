"""What every evaluation command shares: backbone loading, evaluation transforms, labelled features,
and the JSON result file (default next to the checkpoint, never overwritten unless ``overwrite=true``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.augment import build_eval_transform
from common.backbones import is_model_name, load_backbone, read_backbone_config
from common.config_help import parse_command_line
from common.data import dataset_info
from common.entry import run_command
from common.errors import ConfigError, RunFolderError
from common.output_paths import check_output_file
from evaluation.labelled import train_test_features
from evaluation.run_progress import announce_progress


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_eval_backbone(checkpoint: str) -> tuple[nn.Module, int, int]:
    """``(backbone, feature_dim, input_channels)`` of a run folder, checkpoint, safetensors file or model name."""
    backbone, feature_dim = load_backbone(checkpoint)
    in_chans = 3 if is_model_name(checkpoint) else read_backbone_config(checkpoint)[1]
    return backbone, feature_dim, in_chans


def dataset_transform(cfg, backbone_channels: int) -> Callable:
    """``common.augment``'s evaluation transform for ``cfg.data`` at ``cfg.image_size`` (None: native)."""
    return build_eval_transform(dataset_info(cfg.data), backbone_channels, cfg.image_size)


def labelled_features(cfg) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frozen features of ``cfg.data``'s train split (optionally ``cfg.max_train_images`` of it, stratified)
    and test split, from ``cfg.checkpoint``."""
    backbone, _, in_chans = load_eval_backbone(cfg.checkpoint)
    device = resolve_device(cfg.device)
    backbone.to(device)
    return tuple(train_test_features(backbone, replace(cfg.data, num_workers=cfg.num_workers), in_chans,
                                     cfg.image_size, cfg.batch_size, cfg.max_train_images, device,
                                     getattr(cfg, "progress_bar", False)))


def default_output(checkpoint: str, protocol: str, dataset: str | None) -> Path:
    """``eval_<protocol>[_<dataset>].json`` in the run/checkpoint folder, or the current folder (with the
    model's name) for a named torchvision/timm model."""
    stem = f"eval_{protocol}_{dataset}" if dataset else f"eval_{protocol}"
    if is_model_name(checkpoint):
        return Path(f"{stem}_{re.sub(r'[^A-Za-z0-9_.-]', '_', checkpoint)}.json")
    name = f"{stem}.json"
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / name


def run_protocol(schema: type, evaluate: Callable[[Any], dict], argv: Sequence[str] | None,
                 protocol: str | Callable[[Any], str], plot: Callable[[dict, Path], None] | None = None,
                 usage: str = "") -> int:
    """Parse the config, refuse to overwrite an existing result, evaluate, write the JSON; the exit code.

    ``protocol`` names the result (``eval_<protocol>_<dataset>.json``); a callable derives it from the config.
    The result records the step the weights were saved at and the run's total steps (``evaluation.run_progress``),
    and the console says when the run is unfinished. ``output`` naming a folder is refused before the evaluation.
    ``plot(results, png_path)`` draws the figure of the results next to the JSON (same name, ``.png``).
    ``--help`` prints ``usage`` (by default the command of ``schema``'s module) and every key; ``--print-config``
    the resolved config. Bad input is one line and
    exit code 2 (``common.entry.run_command``); anything else is a bug and keeps its traceback.
    """

    def body() -> int:
        command = schema.__module__.removeprefix("evaluation.")  # not ``protocol``: it names the result file
        summary = (sys.modules[schema.__module__].__doc__ or "").strip().split("\n\n")[0]
        cfg = parse_command_line(schema, argv, usage or f"usage: python -m evaluation {command} checkpoint=PATH "
                                 f"[key=value ...] [--print-config] [--help]\n\n{summary}")
        if cfg is None:
            return 0
        if not cfg.checkpoint:
            raise ConfigError("missing value for key 'checkpoint' (a run folder, backbone.safetensors or a model "
                              "name)")
        name = protocol(cfg) if callable(protocol) else protocol
        dataset = getattr(cfg, "dataset", None) or getattr(getattr(cfg, "data", None), "name", None)
        output = check_output_file(cfg.output or default_output(cfg.checkpoint, name, dataset), "output",
                                   (".png",) if plot is not None else ())
        if output.exists() and not cfg.overwrite:
            raise RunFolderError(f"{output} exists; pass overwrite=true or another output=PATH")
        progress = announce_progress(cfg.checkpoint, "evaluating")
        unfinished = progress is not None and not progress.finished
        start = time.perf_counter()
        results = evaluate(cfg)
        record = {"protocol": name, "checkpoint": cfg.checkpoint,
                  "checkpoint_step": progress.step if progress else None,  # None: a model name or a loose file
                  "total_steps": progress.total_steps if progress else None,
                  "run_finished": progress.finished if progress else None, "results": results,
                  "seconds": round(time.perf_counter() - start, 2), "config": asdict(cfg)}
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)  # a write that failed leaves nothing beside the result
        if plot is not None:
            plot(results, output.with_suffix(".png"))
            print(f"wrote {output.with_suffix('.png')}")
        for key, value in results.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        print(f"wrote {output}" + (f" (an unfinished run, {progress.describe()})" if unfinished else ""))
        return 0

    return run_command(body)
