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

import torch
from torchvision.transforms import v2

from common.blur import SeparableGaussianBlur, blur_kernel_size
from common.config import ConfigError, load_config
from common.data import (
    DataConfig,
    DatasetInfo,
    MultiViewDataset,
    build_dataset,
    dataset_info,
    stratified_subset,
)
from common.plots import new_figure, save_figure

AUGMENT_NAMES = ("multiview", "supervised", "none")
AUGMENT_PLACES = ("loader", "device")
DECODERS = ("cpu", "gpu")
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
    name: str = "multiview"  # multiview (SSL views) | supervised (random resized crop + flip) | none (eval)
    on: str = "loader"  # loader (common/augment.py, DataLoader workers) | device (common/batch_augment.py)
    num_views: int = 2  # global views (MSBReg's K)
    image_size: int | None = None  # global crop size; None = the dataset's native size
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    interpolation: str = "bicubic"  # crop resize: bicubic (SimCLR, BYOL, DINO) | bilinear
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.8  # SimCLR colour strength s=1: 0.8s, 0.8s, 0.8s, 0.2s
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur_prob: list[float] = field(default_factory=lambda: [0.5])  # per view, cycled, any size (BYOL: [1.0, 0.1])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize_prob: list[float] = field(default_factory=lambda: [0.0])  # per view, cycled (BYOL: [0.0, 0.2])
    local_crops: int = 0  # DINO/SwAV multi-crop
    local_size: int = 96
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    decode: str = "cpu"  # on=device, image files: cpu (workers decode + crop) | gpu (nvJPEG on the CUDA device)


# ----------------------------------------------------------------------------------------------------------
# Paper presets


def simclr_augment(strength: float = 1.0) -> AugmentConfig:
    """SimCLR (Chen et al., 2020, appendix A): colour jitter 0.8s/0.8s/0.8s/0.2s with p=0.8, grayscale 0.2,
    blur 0.5, crop scale 0.08-1 (its CIFAR-10 recipe drops the blur, appendix B.9: set ``blur_prob=[0.0]``)."""
    return AugmentConfig(
        brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength
    )


def byol_augment() -> AugmentConfig:
    """BYOL (Grill et al., 2020, table 6): jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale 0.2, blur 1.0/0.1
    and solarize 0.0/0.2 on the two views."""
    return AugmentConfig(
        brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=[1.0, 0.1], solarize_prob=[0.0, 0.2]
    )


def msbreg_augment(views: int = 4) -> AugmentConfig:
    """MSBReg supplementary table 1: crop p=1, flip 0.5, jitter p=0.8 with 0.4/0.4/0.2/0.1, colour
    dropping 0.2, blur 1.0 and solarize 0.2 on every one of the K views."""
    return AugmentConfig(
        num_views=views,
        flip_prob=0.5,
        jitter_prob=0.8,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        grayscale_prob=0.2,
        blur_prob=[1.0],
        solarize_prob=[0.2],
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
    """Raise ``ConfigError`` naming the first ``augment.*`` key whose value makes no sense."""
    if cfg.name not in AUGMENT_NAMES:
        raise ConfigError(f"augment.name must be one of {', '.join(AUGMENT_NAMES)}, got '{cfg.name}'")
    if cfg.on not in AUGMENT_PLACES:
        raise ConfigError(f"augment.on must be one of {', '.join(AUGMENT_PLACES)}, got '{cfg.on}'")
    if cfg.decode not in DECODERS:
        raise ConfigError(f"augment.decode must be one of {', '.join(DECODERS)}, got '{cfg.decode}'")
    if cfg.decode == "gpu" and cfg.on != "device":
        raise ConfigError("augment.decode=gpu needs augment.on=device (the views are augmented where they are decoded)")
    if cfg.interpolation not in INTERPOLATIONS:
        choices = ", ".join(INTERPOLATIONS)
        raise ConfigError(f"augment.interpolation must be one of {choices}, got '{cfg.interpolation}'")
    if cfg.num_views < 1:
        raise ConfigError(f"augment.num_views must be at least 1, got {cfg.num_views}")
    if cfg.local_crops < 0:
        raise ConfigError(f"augment.local_crops must be non-negative, got {cfg.local_crops}")
    for key in ("image_size", "local_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"augment.{key} must be a positive number of pixels, got {value}")
    for key in ("flip_prob", "jitter_prob", "grayscale_prob"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"augment.{key} must be a probability in [0, 1], got {getattr(cfg, key)}")
    for key in ("blur_prob", "solarize_prob"):
        values = getattr(cfg, key)
        if not values or not all(0.0 <= p <= 1.0 for p in values):
            raise ConfigError(f"augment.{key} must be a non-empty list of probabilities in [0, 1], got {values}")
    for key in ("brightness", "contrast", "saturation"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"augment.{key} must be non-negative, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.hue <= 0.5:
        raise ConfigError(f"augment.hue must be in [0, 0.5], got {cfg.hue}")
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
    raise ValueError(f"cannot turn {info.channels}-channel images into {out_channels} channels")


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
    output_dir: str = "augment_preview"
    num_images: int = 6  # rows of the grid: the first images of the training set, one class after another
    out_channels: int | None = None  # None: the dataset's channels
    seed: int = 0


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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(PreviewConfig, argv)
        path = preview_views(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
