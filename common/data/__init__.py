"""Dataset registry: real on-disk formats, class-balanced subsets and a seeded multi-view wrapper.

Every dataset yields ``(image, label)`` with ``image`` a PIL image (file-backed data) or a uint8 tensor
``[C, H, W]`` (in-memory data) and ``label`` an int, -1 for unlabelled images. Small datasets (CIFAR,
STL-10, Fashion-MNIST) are held in memory as one contiguous uint8 tensor so the trainer can index and
augment whole batches on the training device.

One module per format (``cifar``, ``stl10``, ``fashion_mnist``, ``folders``, ``hf``); this one maps
``data.name`` to its loader and statistics. A new dataset is a loader ``(cfg, split) -> Dataset`` with a
``targets`` tensor and a ``subset`` method, added to ``LOADERS``.
"""

from __future__ import annotations

import dataclasses

from torch.utils.data import Dataset

from common.data.cifar import CIFAR10_INFO, CIFAR100_INFO, load_cifar10, load_cifar100
from common.data.config import IMAGENET_MEAN, IMAGENET_STD, SPLITS, DataConfig, DatasetInfo
from common.data.datasets import (
    CorruptImageError,
    HFImageDataset,
    ImageFileDataset,
    InMemoryImageDataset,
    MultiViewDataset,
    stratified_subset,
)
from common.data.fashion_mnist import FASHION_MNIST_INFO, load_fashion_mnist, read_idx
from common.data.folders import (
    IMAGE_EXTENSIONS,
    image_folder_num_classes,
    imagenet100_classes,
    load_image_folder,
)
from common.data.hf import load_hf
from common.data.stl10 import STL10_INFO, load_stl10

__all__ = [
    "DATASET_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LOADERS",
    "SPLITS",
    "CorruptImageError",
    "DataConfig",
    "DatasetInfo",
    "HFImageDataset",
    "ImageFileDataset",
    "InMemoryImageDataset",
    "MultiViewDataset",
    "build_dataset",
    "dataset_info",
    "imagenet100_classes",
    "read_idx",
    "stratified_subset",
]

LOADERS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "fashion_mnist": load_fashion_mnist,
    "imagenet": load_image_folder,
    "imagenet100": load_image_folder,
    "image_folder": load_image_folder,
    "hf": load_hf,
}
DATASET_NAMES = tuple(LOADERS)

# Datasets held in memory, whose statistics are known without reading them.
_IN_MEMORY_INFO = {
    "cifar10": CIFAR10_INFO,
    "cifar100": CIFAR100_INFO,
    "stl10": STL10_INFO,
    "fashion_mnist": FASHION_MNIST_INFO,
}


def _check_name(cfg: DataConfig) -> None:
    if cfg.name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset data.name='{cfg.name}' (valid: {', '.join(DATASET_NAMES)})")
    if cfg.name == "cifar100" and cfg.labels not in ("fine", "coarse"):
        raise ValueError(f"data.labels must be 'fine' or 'coarse' for cifar100, got '{cfg.labels}'")


def dataset_info(cfg: DataConfig | str) -> DatasetInfo:
    """Channels, native image size, number of classes and normalisation statistics."""
    cfg = DataConfig(name=cfg) if isinstance(cfg, str) else cfg
    _check_name(cfg)
    if cfg.name == "cifar100" and cfg.labels == "coarse":
        return dataclasses.replace(CIFAR100_INFO, num_classes=20)
    if cfg.name in _IN_MEMORY_INFO:
        return _IN_MEMORY_INFO[cfg.name]
    if cfg.name == "imagenet":
        num_classes = 1000
    elif cfg.name == "imagenet100":
        num_classes = len(imagenet100_classes())
    elif cfg.name == "image_folder":
        num_classes = image_folder_num_classes(cfg)
    else:
        num_classes = len(load_hf(cfg, "train").classes)
    return DatasetInfo(3, 224, num_classes, IMAGENET_MEAN, IMAGENET_STD)


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ("train" | "test" | "unlabeled" | "train+unlabeled") of ``cfg.name``; ``cfg.subset``
    keeps the first N images of every split but "test", stratified by class."""
    _check_name(cfg)
    valid = SPLITS if cfg.name == "stl10" else ("train", "test")
    if split not in valid:
        raise ValueError(f"dataset '{cfg.name}' has no split '{split}' (valid: {', '.join(valid)})")
    dataset = LOADERS[cfg.name](cfg, split)
    if cfg.subset is not None and split != "test":
        dataset = dataset.subset(stratified_subset(dataset.targets, cfg.subset))
    return dataset
