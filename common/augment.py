"""Per-image augmentation pipelines (torchvision.transforms.v2) run in the DataLoader workers.

``python -m common.augment data.name=cifar10 augment.num_views=4 output_dir=DIR`` draws the views of a
few training images into ``DIR/views.png`` (with the numbers in ``DIR/views.json``) to check a recipe by eye.

``common/batch_augment.py`` implements the same ``AugmentConfig`` on whole batches on the training
device; both read the fields with the meanings documented here. Per-view lists (``blur_prob``,
``solarize_prob``) are indexed by the view's position in the output list (global views first, then
local crops), cycled when shorter than the number of views, and applied at every crop size.
``build_crop_transforms`` is the loader-side half of ``augment.on=device`` for image files: decode and
random-resized-crop only, the rest on the device.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from torchvision.transforms import v2

from common.blur import SeparableGaussianBlur, blur_kernel_size
from common.config_help import parse_command_line
from common.config_types import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Range
from common.data import (
    DataConfig,
    DatasetInfo,
    MultiViewDataset,
    build_dataset,
    dataset_info,
    stratified_subset,
)
from common.errors import ConfigError
from common.plots import new_figure, save_figure

# Crop resampling: SimCLR, BYOL and DINO resize their random crops bicubically.
INTERPOLATIONS = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}
# ImageNet-style evaluation resizes to size / 0.875 (256 for 224) before the centre crop.
EVAL_CROP_FRACTION = 0.875
# Datasets whose native size is at least this are resized and centre-cropped for evaluation.
LARGE_IMAGE_SIZE = 224
# ITU-R 601 luma weights, used for the statistics of RGB data turned into one channel.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class AugmentConfig:
    # multiview: the self-supervised views | supervised: random resized crop + flip | none: the eval transform
    name: Literal["multiview", "supervised", "none"] = "multiview"
    on: Literal["loader", "device"] = "loader"  # loader: per image in DataLoader workers | device: batched on the device
    num_views: PositiveInt = 2  # global views (MSBReg's K)
    image_size: PositiveInt | None = None  # global crop size; None = the dataset's native size
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"  # crop resize: bicubic (SimCLR, BYOL, DINO)
    flip_prob: Fraction = 0.5  # horizontal flip
    jitter_prob: Fraction = 0.8  # colour jitter applied with this probability
    brightness: NonNegativeFloat = 0.8  # SimCLR colour strength s=1: 0.8s, 0.8s, 0.8s, 0.2s
    contrast: NonNegativeFloat = 0.8  # colour jitter's contrast factor range [1 - c, 1 + c]
    saturation: NonNegativeFloat = 0.8  # colour jitter's saturation factor range [1 - s, 1 + s]
    hue: Annotated[float, Range(low=0.0, high=0.5)] = 0.2  # colour jitter's hue shift range [-h, h], in turns
    grayscale_prob: Fraction = 0.2  # colour dropping
    blur_prob: list[Fraction] = field(default_factory=lambda: [0.5])  # per view, cycled, any size (BYOL: [1.0, 0.1])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # Gaussian blur's sigma range, in pixels
    solarize_prob: list[Fraction] = field(default_factory=lambda: [0.0])  # per view, cycled (BYOL: [0.0, 0.2])
    local_crops: NonNegativeInt = 0  # DINO/SwAV multi-crop: local views after the global ones
    local_size: PositiveInt = 96  # the local views' size
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])  # their RandomResizedCrop area range
    decode: Literal["cpu", "gpu"] = "cpu"  # on=device, image files: cpu (workers decode + crop) | gpu (nvJPEG on CUDA)


# ----------------------------------------------------------------------------------------------------------
# Paper presets


def simclr_augment(strength: float = 1.0) -> AugmentConfig:
    """SimCLR (Chen et al., 2020, appendix A): colour jitter 0.8s/0.8s/0.8s/0.2s with p=0.8, grayscale 0.2,
    blur 0.5, crop scale 0.08-1 (its CIFAR-10 recipe drops the blur, appendix B.9: set ``blur_prob=[0.0]``)."""
    return AugmentConfig(
        brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength
    )


def dino_multicrop(local_crops: int = 8) -> AugmentConfig:
    """DINO (Caron et al., 2021): 2 global 224 px crops (scale 0.4-1; blur 1.0/0.1, solarize 0.0/0.2) and
    ``local_crops`` 96 px crops (scale 0.05-0.4; blur 0.5), BYOL's colour jitter."""
    return AugmentConfig(
        image_size=224,
        crop_scale=[0.4, 1.0],
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        blur_prob=[1.0, 0.1] + [0.5] * local_crops,
        solarize_prob=[0.0, 0.2] + [0.0] * local_crops,
        local_crops=local_crops,
        local_size=96,
        local_crop_scale=[0.05, 0.4],
    )


# ----------------------------------------------------------------------------------------------------------
# Checks and small helpers


def _check_range(key: str, values: Sequence[float], low: float, high: float) -> None:
    if len(values) != 2 or not low <= values[0] <= values[1] <= high:
        raise ConfigError(f"augment.{key} must be [min, max] with {low} <= min <= max <= {high}, got {list(values)}")


def check_augment_config(cfg: AugmentConfig) -> None:
    """What the keys' types cannot say (the config loader checks those): ``ConfigError`` naming the key."""
    if cfg.decode == "gpu" and cfg.on != "device":
        raise ConfigError("augment.decode=gpu needs augment.on=device (the views are augmented where they are decoded)")
    for key in ("blur_prob", "solarize_prob"):
        if not getattr(cfg, key):
            raise ConfigError(f"augment.{key} must list at least one probability (cycled over the views)")
    _check_range("crop_scale", cfg.crop_scale, 1e-6, 1.0)
    _check_range("local_crop_scale", cfg.local_crop_scale, 1e-6, 1.0)
    _check_range("blur_sigma", cfg.blur_sigma, 1e-6, float("inf"))


def per_view(values: Sequence[float], view: int) -> float:
    """The value of a per-view list for view number ``view``, cycling when the list is shorter."""
    return values[view % len(values)]


def channel_stats(info: DatasetInfo, out_channels: int) -> tuple[list[float], list[float]]:
    """Normalisation mean and std for ``out_channels`` channels made from the dataset's channels."""
    if out_channels == info.channels:
        return list(info.mean), list(info.std)
    if info.channels == 1 and out_channels == 3:
        return list(info.mean) * 3, list(info.std) * 3
    if info.channels == 3 and out_channels == 1:
        # Luma-weighted channel statistics: exact for the mean, a close upper bound for the std.
        return [sum(w * m for w, m in zip(LUMA_WEIGHTS, info.mean))], [sum(w * s for w, s in zip(LUMA_WEIGHTS, info.std))]
    raise ConfigError(f"cannot turn {info.channels}-channel images into {out_channels} channels")


def _to_image(info: DatasetInfo, out_channels: int) -> list[Callable]:
    """PIL or uint8 tensor -> uint8 image tensor with ``out_channels`` channels."""
    steps: list[Callable] = [v2.ToImage()]
    if out_channels != info.channels:
        channel_stats(info, out_channels)  # rejects impossible conversions with a clear message
        steps.append(v2.Grayscale(num_output_channels=out_channels))
    return steps


def random_resized_crop(cfg: AugmentConfig, size: int, scale: Sequence[float]) -> v2.RandomResizedCrop:
    """The random resized crop of every pipeline: area fraction in ``scale``, aspect ratio in [3/4, 4/3],
    resampled with ``augment.interpolation`` and antialiasing (torchvision's rejection sampling of the box)."""
    return v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=INTERPOLATIONS[cfg.interpolation],
                                antialias=True)


def _normalize(info: DatasetInfo, out_channels: int) -> list[Callable]:
    mean, std = channel_stats(info, out_channels)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


# ----------------------------------------------------------------------------------------------------------
# Pipelines


def _ssl_view(cfg: AugmentConfig, info: DatasetInfo, out_channels: int, size: int, scale: Sequence[float],
              view: int) -> v2.Compose:
    """One SimCLR/BYOL-style view: crop, flip, colour jitter, grayscale, blur, solarize, normalise."""
    steps = _to_image(info, out_channels)
    steps += [random_resized_crop(cfg, size, scale), v2.RandomHorizontalFlip(cfg.flip_prob)]
    if out_channels == 3:
        jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    else:  # saturation and hue need colour channels
        jitter = v2.ColorJitter(cfg.brightness, cfg.contrast)
    steps.append(v2.RandomApply([jitter], p=cfg.jitter_prob))
    if out_channels == 3:
        steps.append(v2.RandomGrayscale(cfg.grayscale_prob))
    blur_prob = per_view(cfg.blur_prob, view)
    if blur_prob > 0:
        blur = SeparableGaussianBlur(blur_kernel_size(size), sigma=tuple(cfg.blur_sigma))
        steps.append(v2.RandomApply([blur], p=blur_prob))
    solarize_prob = per_view(cfg.solarize_prob, view)
    if solarize_prob > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_prob))  # uint8 threshold: half of 255
    return v2.Compose(steps + _normalize(info, out_channels))


def build_eval_transform(info: DatasetInfo, out_channels: int, image_size: int | None = None) -> v2.Compose:
    """Deterministic evaluation transform. Small datasets: to tensor and normalise, resized only when
    ``image_size`` differs from the native size. ImageNet-like data: resize the short side to
    ``image_size / 0.875``, then centre-crop ``image_size`` (224 by default)."""
    steps = _to_image(info, out_channels)
    if info.image_size >= LARGE_IMAGE_SIZE:
        size = image_size or LARGE_IMAGE_SIZE
        steps += [v2.Resize(round(size / EVAL_CROP_FRACTION), antialias=True), v2.CenterCrop(size)]
    elif image_size is not None and image_size != info.image_size:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    return v2.Compose(steps + _normalize(info, out_channels))


def build_supervised_transform(cfg: AugmentConfig, info: DatasetInfo, out_channels: int) -> v2.Compose:
    """Supervised training transform: random resized crop (``crop_scale``) and horizontal flip."""
    check_augment_config(cfg)
    size = cfg.image_size or info.image_size
    steps = _to_image(info, out_channels) + [
        random_resized_crop(cfg, size, cfg.crop_scale),
        v2.RandomHorizontalFlip(cfg.flip_prob),
    ]
    return v2.Compose(steps + _normalize(info, out_channels))


def build_view_transforms(cfg: AugmentConfig, info: DatasetInfo, out_channels: int) -> list[Callable]:
    """One transform per view, each mapping a PIL image or uint8 tensor to a normalised float tensor
    ``[out_channels, size, size]``: ``num_views`` global views, then ``local_crops`` local crops
    (multiview only). ``supervised`` and ``none`` give ``num_views`` copies of their single transform."""
    check_augment_config(cfg)
    if cfg.name == "supervised":
        return [build_supervised_transform(cfg, info, out_channels)] * cfg.num_views
    if cfg.name == "none":
        return [build_eval_transform(info, out_channels, cfg.image_size)] * cfg.num_views
    size = cfg.image_size or info.image_size
    views = [_ssl_view(cfg, info, out_channels, size, cfg.crop_scale, v) for v in range(cfg.num_views)]
    views += [
        _ssl_view(cfg, info, out_channels, cfg.local_size, cfg.local_crop_scale, cfg.num_views + v)
        for v in range(cfg.local_crops)
    ]
    return views


def crop_channels(info: DatasetInfo, out_channels: int) -> int:
    """Channels of the uint8 crops that loader workers hand to the device: a 1-channel image stays one channel
    (the device repeats it after the colour operations, which leave gray pixels gray)."""
    return 1 if out_channels == 1 or info.channels == 1 else 3


def build_crop_transforms(cfg: AugmentConfig, info: DatasetInfo,
                          out_channels: int) -> tuple[v2.Compose, list[v2.RandomResizedCrop]]:
    """The loader-side half of ``augment.on=device`` for image files: ``(to_uint8, crops)``. ``to_uint8`` maps a
    PIL image or uint8 tensor to a uint8 tensor of ``crop_channels`` channels; ``crops`` holds one random resized
    crop per view (global views, then local crops) to its output size, uint8 in, uint8 out -- the first step of
    ``build_view_transforms``'s pipelines; flip, colour, blur, solarisation and normalisation run on the device
    (``common.batch_augment.BatchAugment.augment_crops``)."""
    check_augment_config(cfg)
    if cfg.name == "none":
        raise ConfigError("augment.on=device needs augment.name multiview or supervised (none is the eval transform)")
    to_uint8 = v2.Compose(_to_image(info, crop_channels(info, out_channels)))
    size = cfg.image_size or info.image_size
    crops = [random_resized_crop(cfg, size, cfg.crop_scale)] * cfg.num_views
    if cfg.name == "multiview":
        crops += [random_resized_crop(cfg, cfg.local_size, cfg.local_crop_scale)] * cfg.local_crops
    return to_uint8, crops


# ----------------------------------------------------------------------------------------------------------
# Preview


@dataclass
class PreviewConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output_dir: str = "augment_preview"  # where views.png and views.json are written
    num_images: PositiveInt = 6  # rows of the grid: the first images of the training set, one class after another
    out_channels: PositiveInt | None = None  # None: the dataset's channels
    seed: int = 0  # the views' random crops, jitter, blur and solarisation


def preview_views(cfg: PreviewConfig) -> Path:
    """Write ``views.png`` (one row per image: the evaluation view, then every augmented view) and
    ``views.json`` (configs, image indices, labels, and each view's size and normalised mean/std)."""
    info = dataset_info(cfg.data)
    out_channels = cfg.out_channels or info.channels
    dataset = build_dataset(cfg.data, "train")
    views = MultiViewDataset(dataset, build_view_transforms(cfg.augment, info, out_channels), cfg.seed)
    evaluation = build_eval_transform(info, out_channels)
    indices = stratified_subset(dataset.targets, min(cfg.num_images, len(dataset)))
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in channel_stats(info, out_channels))

    columns = 1 + len(views.transforms)
    fig, axes = new_figure(len(indices), columns, figsize=(1.6 * columns, 1.6 * len(indices)), squeeze=False)
    rows, labels = [], []
    for row, index in enumerate(indices):
        tensors, label = views[index]
        labels.append(label)
        shown = [evaluation(dataset[index][0])] + tensors
        rows.append(tensors)
        for col, tensor in enumerate(shown):
            pixels = (tensor * std + mean).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            axes[row, col].imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title("eval" if col == 0 else f"view {col - 1}", fontsize=8)
    out_dir = Path(cfg.output_dir)
    save_figure(fig, out_dir / "views.png", dpi=100)

    per_view = [torch.stack([r[v] for r in rows]) for v in range(len(views.transforms))]
    summary = {
        "data": asdict(cfg.data),
        "augment": asdict(cfg.augment),
        "seed": cfg.seed,
        "indices": indices,
        "labels": labels,
        "views": [
            {"shape": list(v.shape[1:]), "mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)}
            for v in per_view
        ],
    }
    (out_dir / "views.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir / "views.png"


PREVIEW_USAGE = """usage: python -m common.augment [--config FILE.yaml] [key=value ...] [--print-config] [--help]

Draw the views of a few training images into <output_dir>/views.png (numbers in views.json) to check an
augmentation recipe by eye.
"""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_command_line(PreviewConfig, argv, PREVIEW_USAGE)
        if cfg is None:  # --help or --print-config: nothing is drawn or written
            return 0
        path = preview_views(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
