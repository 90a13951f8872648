"""Small on-disk data and backbones for the evaluation-protocol tests (real formats, written by the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.backbones import BackboneConfig, build_backbone, save_backbone


def save_random_backbone(folder: Path, in_chans: int = 3, width: int = 4) -> Path:
    """A He-initialised ``small_convnet`` (``8 width``-d features) saved as ``folder/backbone.safetensors``."""
    torch.manual_seed(0)
    cfg = BackboneConfig(name="small_convnet", width=width)
    backbone, _ = build_backbone(cfg, in_chans=in_chans)
    for module in backbone.modules():  # He initialisation keeps random features at unit scale
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backbone.safetensors"
    save_backbone(backbone, cfg, in_chans, path)
    return path


def save_rgb_backbone(folder: Path) -> Path:
    """A 3-channel ``small_convnet`` of width 4 (32-d features)."""
    return save_random_backbone(folder)


def colour_image(label: int, rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """Noise with the channel ``label % 3`` raised and a bright band at a height set by ``label // 3``:
    images of different labels are easy to tell apart."""
    pixels = rng.integers(0, 60, (*size, 3))
    pixels[..., label % 3] += 150
    band = (label // 3) * 4 % (size[0] - 4)
    pixels[band:band + 4] = 230
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_image_folder(root: Path, splits: dict[str, int], classes: int = 3) -> None:
    """root/<split>/<wnid>/<wnid>_<i>.JPEG with class-coded images."""
    rng = np.random.default_rng(1)
    for split, count in splits.items():
        for c in range(classes):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                colour_image(c, rng).save(folder / f"n0000000{c}_{i}.JPEG")
