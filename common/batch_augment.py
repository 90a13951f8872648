"""Batched augmentation on the training device, with per-sample random parameters.

The same ``AugmentConfig`` and the same distribution of views as the per-image torchvision pipelines of
``common/augment.py``. Each view's per-sample parameters are drawn first (``draw_view_params``: torchvision's
probabilities and ranges, and a random order of the four colour-jitter operations per sample, as
``v2.ColorJitter`` does), then applied to the whole batch (``apply_view_params``) with torchvision's formulas:
brightness, contrast and saturation blend as ``v2.functional.adjust_*``, hue is rotated in HSV, grayscale uses
its luma weights, the blur is ``common.blur.gaussian_blur``, solarisation inverts the pixels >= 128/255.

Two entry points. ``BatchAugment.__call__`` takes whole in-memory uint8 images and also crops on the device:
``draw_crop_boxes`` is ``v2.RandomResizedCrop``'s box sampling (ten tries of area and log-aspect, then the
centre fallback), vectorised, and ``grid_sample`` resamples each box. ``BatchAugment.augment_crops`` takes views
that loader workers already cropped to their output size (image files: ``common.augment.build_crop_transforms``).

Differences from the per-image pipelines, by design: values stay float between operations (torchvision rounds to
uint8 after each, up to half a grey level per operation), and the device crop of in-memory images reads the
pixels around the box and does not antialias (torchvision resamples the box alone, antialiased; the in-memory data
sets are small, so their crops are rarely shrunk). Randomness comes from the ``generator`` passed in: a step's
views are reproducible, and every rank draws the whole global batch's numbers and keeps its own rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.augment import AugmentConfig, channel_stats, check_augment_config, crop_channels, per_view
from common.blur import blur_kernel_size, gaussian_blur
from common.data import DatasetInfo
from common.errors import ConfigError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
SOLARIZE_THRESHOLD = 128 / 255  # torchvision's threshold on uint8 images
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # v2.ColorJitter's operation numbers 0-3
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratio range
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before the centre crop


class SampleDraws:
    """Per-sample random numbers for a rank's slice of the global batch.

    Every rank draws the numbers of the whole global batch (cheap) and keeps its own rows, so sample
    ``i`` of the global batch gets the same augmentation whatever the number of processes.
    """

    def __init__(self, generator: torch.Generator, n: int, rank: int = 0, world: int = 1, device="cpu"):
        self.generator, self.n, self.rank, self.world, self.device = generator, n, rank, world, device

    def uniform(self, low: float, high: float, *shape: int, dtype=torch.float32) -> torch.Tensor:
        u = torch.rand(self.n * self.world, *shape, generator=self.generator, device=self.device, dtype=dtype)
        return low + (high - low) * u[self.rank * self.n:(self.rank + 1) * self.n]

    def bernoulli(self, p: float) -> torch.Tensor:
        return self.uniform(0.0, 1.0) < p


# ----------------------------------------------------------------------------------------------------------
# Random resized crop of in-memory images


def draw_crop_boxes(height: int, width: int, scale: tuple[float, float], draws: SampleDraws) -> torch.Tensor:
    """``[n, 4]`` integer boxes ``(top, left, box_height, box_width)``, distributed as ``v2.RandomResizedCrop``'s:
    up to ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in [3/4, 4/3], the
    first whose rounded box fits; else the centre crop of the image clipped to that ratio range."""
    area = draws.uniform(scale[0], scale[1], CROP_ATTEMPTS, dtype=torch.float64) * (height * width)
    ratio = torch.exp(draws.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), CROP_ATTEMPTS,
                                    dtype=torch.float64))
    w = torch.round(torch.sqrt(area * ratio))
    h = torch.round(torch.sqrt(area / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        centre_w, centre_h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        centre_w, centre_h = round(height * CROP_RATIO[1]), height
    else:
        centre_w, centre_h = width, height
    w, h = torch.where(found, w, centre_w), torch.where(found, h, centre_h)
    top = torch.where(found, torch.floor(draws.uniform(0, 1, dtype=torch.float64) * (height - h + 1)),
                      (height - h) // 2)
    left = torch.where(found, torch.floor(draws.uniform(0, 1, dtype=torch.float64) * (width - w + 1)),
                       (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1).long()


def resample_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Each image's box ``(top, left, height, width)`` resized to ``size x size``: output pixel centres map to the
    box as ``F.interpolate(align_corners=False)`` maps them (``mode`` bicubic or bilinear, clipped to [0, 1])."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False).clamp_(0, 1)


# ----------------------------------------------------------------------------------------------------------
# Per-sample photometric parameters and their application


@dataclass
class ViewParams:
    """One view's per-sample parameters (``[n]`` each; ``None``: the operation is off for this view)."""

    flip: torch.Tensor  # bool
    jitter: torch.Tensor | None = None  # bool: colour jitter applied
    order: torch.Tensor | None = None  # [n, 4]: the order of JITTER_OPS, a uniform random permutation
    factors: dict[str, torch.Tensor] | None = None  # JITTER_OPS name -> factor (hue: shift in turns)
    gray: torch.Tensor | None = None  # bool
    blur: torch.Tensor | None = None  # bool
    sigma: torch.Tensor | None = None  # blur sigma in pixels
    solarize: torch.Tensor | None = None  # bool


def jitter_ranges(cfg: AugmentConfig, channels: int) -> dict[str, tuple[float, float]]:
    """``v2.ColorJitter``'s factor ranges; saturation and hue only for colour images, zero strengths off."""
    ranges = {}
    for name in JITTER_OPS[:4 if channels == 3 else 2]:
        strength = getattr(cfg, name)
        if strength > 0:
            ranges[name] = (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
    return ranges


def draw_view_params(cfg: AugmentConfig, view: int, channels: int, draws: SampleDraws) -> ViewParams:
    """The parameters of view number ``view`` (global views first, then local crops) for every sample."""
    params = ViewParams(flip=draws.bernoulli(cfg.flip_prob))
    if cfg.name == "supervised":
        return params
    params.jitter = draws.bernoulli(cfg.jitter_prob)
    params.order = draws.uniform(0, 1, len(JITTER_OPS)).argsort(dim=1)
    params.factors = {name: draws.uniform(low, high) for name, (low, high) in jitter_ranges(cfg, channels).items()}
    if channels == 3 and cfg.grayscale_prob > 0:
        params.gray = draws.bernoulli(cfg.grayscale_prob)
    blur_prob = per_view(cfg.blur_prob, view)
    if blur_prob > 0:
        params.blur, params.sigma = draws.bernoulli(blur_prob), draws.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1])
    solarize_prob = per_view(cfg.solarize_prob, view)
    if solarize_prob > 0:
        params.solarize = draws.bernoulli(solarize_prob)
    return params


def gray(x: torch.Tensor) -> torch.Tensor:
    """``[n, 1, h, w]`` luma of ``[n, 3, h, w]`` RGB (a 1-channel image is its own)."""
    if x.shape[1] == 1:
        return x
    r, g, b = GRAY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def _per_sample(value: torch.Tensor) -> torch.Tensor:
    return value[:, None, None, None]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``factor * x + (1 - factor) * other``, clipped to [0, 1]."""
    factor = _per_sample(factor)
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x, factor):
    return _blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, gray(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images by ``shift`` turns (per sample), as ``v2.functional.adjust_hue``.

    With value V = max, chroma C = max - min and the hue H in sixths of a turn, channel ``n`` (R 5, G 3, B 1) is
    ``V - C * clip(min(k, 4 - k), 0, 1)`` with ``k = (n + H) mod 6``: the HSV -> RGB map without the six cases.
    """
    if x.shape[1] == 1:
        return x
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    r, g, b = x.unbind(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = hue + 6 * shift[:, None, None]
    channels = [value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
                for k in (torch.remainder(n + hue, 6) for n in (5, 3, 1))]
    return torch.stack(channels, dim=1)


JITTER_FUNCTIONS = {"brightness": adjust_brightness, "contrast": adjust_contrast,
                    "saturation": adjust_saturation, "hue": adjust_hue}


def _where(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """``fn(x, *args)`` on the samples where ``mask`` holds, ``x`` elsewhere. On a CPU only those samples are
    computed, and written into ``x`` in place; on an accelerator every sample is, and selected, so that no step
    waits for the mask's value."""
    if x.device.type != "cpu":
        return torch.where(_per_sample(mask), fn(x, *args), x)
    index = mask.nonzero()[:, 0]
    if len(index):
        x[index] = fn(x[index], *(a[index] for a in args))
    return x


def apply_view_params(x: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Flip, colour jitter (each sample's own order), grayscale, blur, solarise ``[n, c, h, w]`` floats in
    [0, 1] with ``params``, in the order of the per-image pipelines."""
    x = _where(params.flip, lambda image: image.flip(-1), x.clone())
    if params.jitter is not None:
        for stage in range(len(JITTER_OPS)):
            for number, name in enumerate(JITTER_OPS):
                if name in params.factors:
                    chosen = params.jitter & (params.order[:, stage] == number)
                    x = _where(chosen, JITTER_FUNCTIONS[name], x, params.factors[name])
    if params.gray is not None:
        x = _where(params.gray, lambda image: gray(image).expand_as(image), x)
    if params.blur is not None:
        kernel = blur_kernel_size(x.shape[-1])
        x = _where(params.blur, lambda image, sigma: gaussian_blur(image, sigma, kernel), x, params.sigma)
    if params.solarize is not None:
        x = _where(params.solarize, lambda image: torch.where(image >= SOLARIZE_THRESHOLD, 1 - image, image), x)
    return x


# ----------------------------------------------------------------------------------------------------------
# Whole pipelines


class BatchAugment:
    """Turn uint8 batches into the list of normalised float views of ``AugmentConfig`` on their device."""

    def __init__(self, cfg: AugmentConfig, info: DatasetInfo, out_channels: int, dtype: torch.dtype = torch.float32):
        """``dtype``: of the views (float64 where a test compares two computations that differ only in the order
        of float summations)."""
        check_augment_config(cfg)
        if cfg.name not in ("multiview", "supervised"):
            raise ConfigError(f"augment.on=device supports augment.name multiview or supervised, not '{cfg.name}'")
        self.cfg, self.info, self.out_channels, self.dtype = cfg, info, out_channels, dtype
        self.channels = crop_channels(info, out_channels)  # the channels the colour operations see
        size = cfg.image_size or info.image_size
        self.views = [(size, cfg.crop_scale)] * cfg.num_views
        if cfg.name == "multiview":
            self.views += [(cfg.local_size, cfg.local_crop_scale)] * cfg.local_crops
        mean, std = channel_stats(info, self.channels)
        self.mean = torch.tensor(mean, dtype=torch.float64)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float64)[:, None, None]

    def _finish(self, x: torch.Tensor, view: int, draws: SampleDraws) -> torch.Tensor:
        x = apply_view_params(x, draw_view_params(self.cfg, view, x.shape[1], draws))
        x = (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)
        return x.expand(-1, self.out_channels, -1, -1).contiguous()

    def __call__(self, images: torch.Tensor, generator: torch.Generator, rank: int = 0,
                 world: int = 1) -> list[torch.Tensor]:
        """Views of uint8 images ``[n, C, H, W]`` (cropped here), this rank's slice of a global batch of ``world``
        equal slices."""
        x = images.to(self.dtype).div_(255)
        if x.shape[1] == 3 and self.channels == 1:
            x = gray(x)
        draws = SampleDraws(generator, x.shape[0], rank, world, x.device)
        views = []
        for view, (size, scale) in enumerate(self.views):
            boxes = draw_crop_boxes(x.shape[-2], x.shape[-1], (scale[0], scale[1]), draws)
            views.append(self._finish(resample_boxes(x, boxes, size, self.cfg.interpolation), view, draws))
        return views

    def augment_crops(self, crops: list[torch.Tensor], generator: torch.Generator, rank: int = 0,
                      world: int = 1) -> list[torch.Tensor]:
        """Views of uint8 crops already at their output sizes, one batch ``[n, c, size, size]`` per view
        (``common.augment.build_crop_transforms``), this rank's slice of a global batch."""
        if len(crops) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views of crops, got {len(crops)}")
        draws = SampleDraws(generator, crops[0].shape[0], rank, world, crops[0].device)
        return [self._finish(crop.to(self.dtype).div_(255), view, draws) for view, crop in enumerate(crops)]
