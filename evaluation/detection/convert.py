"""Convert a ResNet backbone (torchvision names) to a Detectron2 weights pickle.

``python -m evaluation.detection.convert --checkpoint PATH --output FILE.pkl`` where PATH is one of our run
folders, a ``backbone.safetensors``, a training checkpoint folder or a torchvision model name (``resnet50``:
its ImageNet weights). The pickle is what Detectron2's ``DetectionCheckpointer`` reads for ``MODEL.WEIGHTS``:
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}``. Names are Detectron2's
backbone names without a model prefix (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``,
``res4.0.shortcut.weight``); ``matching_heuristics`` makes the checkpointer match them by suffix to
``backbone.bottom_up.res2...`` (FPN) or ``backbone.res2...`` / ``roi_heads.res5...`` (C4).
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from common.entry import run_command
from common.errors import RunFolderError
from common.output_paths import check_output_file
from evaluation.run_progress import announce_progress

AUTHOR = "ssl-repro"
# torchvision BatchNorm buffers/parameters Detectron2's norms hold; num_batches_tracked has no counterpart.
_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")
_BLOCK_KEY = re.compile(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)")


def _strip_wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix a wrapper module adds (``backbone.``, ``encoder.module.``) so keys start at ``conv1``."""
    for key in state_dict:
        if key.endswith("layer1.0.conv1.weight"):
            prefix = key[: -len("layer1.0.conv1.weight")]
            if f"{prefix}conv1.weight" in state_dict:
                return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    raise RunFolderError("state dict is not a torchvision ResNet: no 'conv1.weight' with a matching "
                     "'layer1.0.conv1.weight' key")


def _detectron2_name(key: str) -> str | None:
    """Detectron2's name for one torchvision ResNet key, or None for keys Detectron2 has no use for."""
    field = key.rsplit(".", 1)[-1]
    if field == "num_batches_tracked" or key.startswith("fc."):
        return None
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1."):
        return f"stem.conv1.norm.{field}"
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        raise RunFolderError(f"unexpected key '{key}' in a torchvision ResNet state dict")
    stage, block, module, field = match.groups()
    # torchvision's layer1..layer4 are Detectron2's res2..res5 (named by their stride exponent).
    prefix = f"res{int(stage) + 1}.{block}"
    if module.startswith("conv"):
        return f"{prefix}.{module}.{field}"
    if module.startswith("bn"):
        return f"{prefix}.conv{module[2:]}.norm.{field}"
    return f"{prefix}.shortcut.{field}" if module == "downsample.0" else f"{prefix}.shortcut.norm.{field}"


def torchvision_to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename a torchvision ResNet state dict (``fc`` removed or kept) to Detectron2's backbone names.

    Values are copied bit for bit into float32/int64 numpy arrays. Only a 3-channel ImageNet stem (7x7 conv with
    stride 2 followed by max-pool) exists in Detectron2, so a CIFAR stem or another input width is refused.
    """
    state = _strip_wrapper_prefix(state_dict)
    stem = state["conv1.weight"]
    if tuple(stem.shape[1:]) != (3, 7, 7):
        raise RunFolderError(f"conv1.weight has shape {tuple(stem.shape)}: Detectron2's ResNet stem needs a 7x7 conv "
                         "on 3 input channels (a CIFAR stem or a grayscale backbone cannot be transferred)")
    converted: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = _detectron2_name(key)
        if name is None:
            continue
        converted[name] = value.detach().cpu().numpy().copy()
    return converted


def save_detectron2_pickle(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write the pickle Detectron2's checkpointer reads, via a temporary file so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": dict(weights), "__author__": AUTHOR, "matching_heuristics": True}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(payload, handle)
    tmp.replace(path)


def convert_checkpoint(spec: str | Path, output: str | Path) -> dict[str, np.ndarray]:
    """Load a backbone with ``common.backbones.load_backbone`` and write its Detectron2 pickle to ``output``."""
    from common.backbones import REBUILD_ATTRIBUTE, load_backbone

    backbone = load_backbone(spec)[0]
    if getattr(backbone, REBUILD_ATTRIBUTE, None) is not None:
        raise RunFolderError(f"'{spec}' was trained with layers that change its forward pass "
                             f"({getattr(backbone, REBUILD_ATTRIBUTE)['function']}), which Detectron2's ResNet does not have")
    weights = torchvision_to_detectron2(backbone.state_dict())
    save_detectron2_pickle(weights, output)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.detection.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="run folder, backbone.safetensors, checkpoint folder or torchvision name (resnet50)")
    parser.add_argument("--output", required=True, help="Detectron2 weights file to write (.pkl)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error(f"--output '{args.output}' must end in .pkl: Detectron2 reads other suffixes as torch files")

    def body() -> int:
        check_output_file(args.output, "--output")
        announce_progress(args.checkpoint, "converting")
        weights = convert_checkpoint(args.checkpoint, args.output)
        print(f"wrote {len(weights)} tensors to {args.output}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
