"""The channels, size and pixel statistics of file-backed data (``image_folder``, ``hf``), read from its images.

Folders and Hugging Face datasets say nothing about their images, so ``dataset_info`` looks at them: the
headers of up to ``HEADER_SAMPLE`` images spread evenly over the training split give the channels (1 when
every one is grayscale) and the size (their common size when they all share one below ``LARGE_IMAGE_SIZE``,
else ImageNet's 224); the pixels of up to ``STATS_SAMPLE`` of them give the normalisation statistics, except
for large colour images, which keep ImageNet's (what pretrained backbones and the usual protocol expect).
"""

from __future__ import annotations

import numpy as np

from common.data.config import IMAGENET_MEAN, IMAGENET_STD
from common.data.datasets import CorruptImageError

# Images at least this large are resized and centre-cropped to 224 px for evaluation, ImageNet style.
LARGE_IMAGE_SIZE = 224
HEADER_SAMPLE = 64  # headers are read without decoding: cheap even for large JPEGs
STATS_SAMPLE = 256  # decoded images: the statistics only set the inputs' scale, a sample is enough
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def evenly_spaced(num_items: int, count: int) -> list[int]:
    """``min(count, num_items)`` distinct indices spread evenly from the first item to the last."""
    if num_items <= count:
        return list(range(num_items))
    return np.unique(np.linspace(0, num_items - 1, count).round().astype(np.int64)).tolist()


def _readable(indices: list[int], read) -> list:
    """``read(i)`` for each index, leaving out corrupt images: training reports them when it reads them."""
    found = []
    for i in indices:
        try:
            found.append(read(i))
        except CorruptImageError:
            continue
    return found


def image_channels_and_size(dataset, declared_size: int | None) -> tuple[int, int]:
    """(1 or 3, size) of a decoding dataset's images; ``declared_size`` (``data.image_size``) wins over the
    measured size."""
    headers = _readable(evenly_spaced(len(dataset), HEADER_SAMPLE), dataset.header)
    channels = 1 if headers and all(mode in GRAYSCALE_MODES for mode, _ in headers) else 3
    if declared_size is not None:
        return channels, declared_size
    sizes = {size for _, size in headers}
    if len(sizes) == 1 and max(next(iter(sizes))) < LARGE_IMAGE_SIZE:
        return channels, min(next(iter(sizes)))
    return channels, LARGE_IMAGE_SIZE


def image_statistics(dataset, channels: int, size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels in [0, 1]: ImageNet's for large colour images, else those of up
    to ``STATS_SAMPLE`` evenly spaced images (all pixels of each, accumulated in float64)."""
    if channels == 3 and size >= LARGE_IMAGE_SIZE:
        return IMAGENET_MEAN, IMAGENET_STD
    images = _readable(evenly_spaced(len(dataset), STATS_SAMPLE), dataset.decode)
    if not images:
        raise CorruptImageError(f"none of the {len(dataset)} images read for the statistics is readable")
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for image in images:
        pixels = np.asarray(image, dtype=np.float64).reshape(-1, channels) / 255.0
        total += pixels.sum(axis=0)
        total_sq += (pixels * pixels).sum(axis=0)
        count += pixels.shape[0]
    mean = total / count
    # At least one grey level: a channel that is constant in the sample (a colour never used) must still divide.
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0)), 1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())
