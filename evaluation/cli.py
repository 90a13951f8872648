"""What every evaluation command shares: backbone loading, evaluation transforms, labelled features,
and the JSON result file (default next to the checkpoint, never overwritten unless ``overwrite=true``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.augment import build_eval_transform
from common.backbones import is_model_name, load_backbone, read_backbone_config
from common.config import ConfigError, load_config
from common.data import build_dataset, dataset_info, stratified_subset
from evaluation.features import extract_features


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
    transform = dataset_transform(cfg, in_chans)
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    indices = None
    if cfg.max_train_images is not None and cfg.max_train_images < len(train_set):
        indices = torch.tensor(stratified_subset(train_set.targets, cfg.max_train_images))
    train_x, train_y = extract_features(backbone, train_set, transform, cfg.batch_size, device,
                                        cfg.num_workers, indices)
    test_x, test_y = extract_features(backbone, test_set, transform, cfg.batch_size, device, cfg.num_workers)
    if (train_y < 0).any() or (test_y < 0).any():
        raise ValueError(f"dataset '{cfg.data.name}' has unlabelled images; evaluation needs labels")
    return train_x, train_y, test_x, test_y


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
                 protocol: str | Callable[[Any], str], plot: Callable[[dict, Path], None] | None = None) -> int:
    """Parse the config, refuse to overwrite an existing result, evaluate, write the JSON; the exit code.

    ``protocol`` names the result (``eval_<protocol>_<dataset>.json``); a callable derives it from the config.
    ``plot(results, png_path)`` draws the figure of the results next to the JSON (same name, ``.png``).
    """
    try:
        cfg = load_config(schema, argv)
        if cfg.checkpoint in ("???", ""):
            raise ConfigError("missing value for key 'checkpoint' (a run folder, backbone.safetensors or a model name)")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    protocol = protocol(cfg) if callable(protocol) else protocol
    dataset = getattr(cfg, "dataset", None) or getattr(getattr(cfg, "data", None), "name", None)
    output = Path(cfg.output) if cfg.output else default_output(cfg.checkpoint, protocol, dataset)
    if output.exists() and not cfg.overwrite:
        print(f"error: {output} exists; pass overwrite=true or another output=PATH", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        results = evaluate(cfg)
    except (FileNotFoundError, ValueError) as error:  # bad input: a missing folder, a corrupt image, a foreign checkpoint
        print(f"error: {error}", file=sys.stderr)
        return 2
    record = {"protocol": protocol, "checkpoint": cfg.checkpoint, "results": results,
              "seconds": round(time.perf_counter() - start, 2), "config": asdict(cfg)}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(output)
    if plot is not None:
        plot(results, output.with_suffix(".png"))
        print(f"wrote {output.with_suffix('.png')}")
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {output}")
    return 0
