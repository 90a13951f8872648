"""Dataset registry: real on-disk formats, class-balanced subsets and a seeded multi-view wrapper.

Every dataset yields ``(image, label)`` with ``image`` a PIL image (file-backed data) or a uint8 tensor
``[C, H, W]`` (in-memory data) and ``label`` an int, -1 for unlabelled images. Small datasets (CIFAR,
STL-10, Fashion-MNIST) are held in memory as one contiguous uint8 tensor so the trainer can index and
augment whole batches on the training device.

One module per format (``cifar``, ``stl10``, ``fashion_mnist``, ``folders``, ``hf``, ``shards``: tar shards
streamed with ``webdataset``, an ``IterableDataset``) and per derived set (``longtail``: long-tailed training
splits; ``hierarchy``: coarse and fine labels of one set); this one maps
``data.name`` to its loader and statistics. A new dataset is a loader ``(cfg, split) -> Dataset`` with a
``targets`` tensor and a ``subset`` method, added to ``LOADERS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch.utils.data import Dataset

from common.data.cifar import CIFAR10_INFO, CIFAR100_INFO, load_cifar10, load_cifar100
from common.data.config import IMAGENET_MEAN, IMAGENET_STD, SPLITS, DataConfig, DatasetInfo
from common.data.datasets import (
    CorruptImageError,
    HFImageDataset,
    ImageFileDataset,
    InMemoryImageDataset,
    MultiViewDataset,
    skipped_files,
    stratified_subset,
)
from common.data.fashion_mnist import FASHION_MNIST_INFO, read_idx
from common.data.folders import (
    IMAGE_EXTENSIONS,
    imagenet100_classes,
    load_image_folder,
)
from common.data.hf import load_hf
from common.data.hierarchy import (
    IMAGENET_HIERARCHIES,
    hierarchy_num_classes,
    imagenet_hierarchy,
    load_fashion_mnist_labels,
    load_imagenet_hierarchy,
)
from common.data.longtail import load_cifar10_lt, load_cifar100_lt, load_fashion_mnist_lt, longtail_indices
from common.data.measure import LARGE_IMAGE_SIZE, image_channels_and_size, image_statistics
from common.data.shard_plan import EpochPlan
from common.data.shards import ShardedDataset, index_info, load_webdataset, read_index
from common.data.skip_record import SkipRecord, hand_over_skips
from common.data.stl10 import STL10_INFO, load_stl10
from common.errors import ConfigError

__all__ = [
    "DATASET_NAMES",
    "FINE_AND_COARSE",
    "IMAGENET_HIERARCHIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LARGE_IMAGE_SIZE",
    "LOADERS",
    "SPLITS",
    "CorruptImageError",
    "DataConfig",
    "DatasetInfo",
    "EpochPlan",
    "HFImageDataset",
    "ImageFileDataset",
    "InMemoryImageDataset",
    "MultiViewDataset",
    "ShardedDataset",
    "SkipRecord",
    "build_dataset",
    "dataset_info",
    "hand_over_skips",
    "imagenet100_classes",
    "imagenet_hierarchy",
    "longtail_indices",
    "open_splits",
    "read_idx",
    "skipped_files",
    "stratified_subset",
]

LOADERS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "fashion_mnist": load_fashion_mnist_labels,
    "cifar10_lt": load_cifar10_lt,
    "cifar100_lt": load_cifar100_lt,
    "fashion_mnist_lt": load_fashion_mnist_lt,
    "imagenet": load_image_folder,
    "imagenet_hierarchy": load_imagenet_hierarchy,
    "imagenet100": load_image_folder,
    "image_folder": load_image_folder,
    "hf": load_hf,
    "webdataset": load_webdataset,
}
DATASET_NAMES = tuple(LOADERS)
# Datasets whose images have fine and coarse labels (data.labels): VCReg's subclass probe (Table 5).
FINE_AND_COARSE = ("cifar100", "fashion_mnist", "imagenet_hierarchy")

# Datasets held in memory, whose statistics are known without reading them.
_IN_MEMORY_INFO = {
    "cifar10": CIFAR10_INFO,
    "cifar100": CIFAR100_INFO,
    "stl10": STL10_INFO,
    "fashion_mnist": FASHION_MNIST_INFO,
    "cifar10_lt": CIFAR10_INFO,  # the balanced training set's statistics, not the long-tailed subset's
    "cifar100_lt": CIFAR100_INFO,
    "fashion_mnist_lt": FASHION_MNIST_INFO,
}


def _check_name(cfg: DataConfig) -> None:
    if cfg.name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset data.name='{cfg.name}' (valid: {', '.join(DATASET_NAMES)})")
    if cfg.labels not in ("fine", "coarse"):
        raise ConfigError(f"data.labels must be 'fine' or 'coarse', got '{cfg.labels}'")
    if cfg.labels == "coarse" and cfg.name not in FINE_AND_COARSE:
        raise ConfigError(f"data.labels=coarse needs a dataset with coarse labels ({', '.join(FINE_AND_COARSE)}), "
                          f"not '{cfg.name}'")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise ConfigError(f"data.image_size must be a positive number of pixels or null, got {cfg.image_size}")


def _measured(cfg: DataConfig) -> bool:
    """Whether the channels, size and statistics of ``cfg`` come from its images (folders, hf)."""
    return cfg.name in ("image_folder", "hf")


def dataset_info(cfg: DataConfig | str) -> DatasetInfo:
    """Channels, native image size, number of classes and normalisation statistics.

    ``image_folder`` and ``hf`` are measured on their training images (``common.data.measure``); imagenet,
    imagenet100 and imagenet_hierarchy are 3-channel, 224 px with ImageNet's statistics."""
    cfg = DataConfig(name=cfg) if isinstance(cfg, str) else cfg
    _check_name(cfg)
    if cfg.name == "cifar100" and cfg.labels == "coarse":
        return dataclasses.replace(CIFAR100_INFO, num_classes=20)
    if cfg.name == "fashion_mnist" and cfg.labels == "coarse":
        return dataclasses.replace(FASHION_MNIST_INFO, num_classes=4)
    if cfg.name in _IN_MEMORY_INFO:
        return _IN_MEMORY_INFO[cfg.name]
    if cfg.name == "webdataset":
        return index_info(read_index(cfg.root))
    if cfg.name == "imagenet":
        return DatasetInfo(3, LARGE_IMAGE_SIZE, 1000, IMAGENET_MEAN, IMAGENET_STD)
    if cfg.name == "imagenet100":
        return DatasetInfo(3, LARGE_IMAGE_SIZE, len(imagenet100_classes()), IMAGENET_MEAN, IMAGENET_STD)
    if cfg.name == "imagenet_hierarchy":
        return DatasetInfo(3, LARGE_IMAGE_SIZE, hierarchy_num_classes(cfg), IMAGENET_MEAN, IMAGENET_STD)
    train = LOADERS[cfg.name](cfg, "train")
    channels, size = image_channels_and_size(train, cfg.image_size)
    train.mode = "L" if channels == 1 else "RGB"
    mean, std = image_statistics(train, channels, size)
    return DatasetInfo(channels, size, len(train.classes), mean, std)


def _load(cfg: DataConfig, split: str) -> Dataset:
    _check_name(cfg)
    valid = SPLITS if cfg.name == "stl10" else ("train", "test")
    if split not in valid:
        raise ConfigError(f"dataset '{cfg.name}' has no split '{split}' (valid: {', '.join(valid)})")
    return LOADERS[cfg.name](cfg, split)


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ("train" | "test" | "unlabeled" | "train+unlabeled") of ``cfg.name``; ``cfg.subset``
    keeps the first N images of every split but "test", stratified by class. Folders and hf datasets of
    grayscale images (every sampled training image grayscale) decode to one channel, others to RGB."""
    dataset = _load(cfg, split)
    if _measured(cfg):
        train = dataset if split == "train" else LOADERS[cfg.name](cfg, "train")
        channels, _ = image_channels_and_size(train, cfg.image_size)
        dataset.mode = "L" if channels == 1 else "RGB"
    if cfg.subset is not None and split != "test":
        dataset = dataset.subset(stratified_subset(dataset.targets, cfg.subset))
    return dataset


def open_splits(cfg: DataConfig, splits: Iterable[str]) -> None:
    """Open each of ``splits`` as ``build_dataset`` does (its folder, Hugging Face split, or shard index and
    shards), decoding no image and measuring nothing: what is missing is a ``DataError`` now. A trainer opens
    the splits its final evaluation reads before its first step, so that they are not found missing after its
    last."""
    for split in splits:
        _load(cfg, split)
