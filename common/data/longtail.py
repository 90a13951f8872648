"""Long-tailed training sets: ``data.name`` = cifar10_lt | cifar100_lt | fashion_mnist_lt.

The training split of the balanced set keeps ``n_i`` images of class ``i`` (classes in label order, 0 the
head), the test split stays balanced (VCReg, Table 3 and Appendix C.3). The profile and the selection are those
of Cao et al. (2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss": their CIFAR
experiments and released code), so CIFAR-10-LT and CIFAR-100-LT here hold the same images as theirs:

- ``exp`` (``data.imbalance_profile``): ``n_i = int(n_max * (1 / ratio) ** (i / (C - 1)))``; with
  ``data.imbalance_ratio`` 100, CIFAR-10-LT keeps 5000, 2997, ..., 50 images (12,406) and CIFAR-100-LT
  500 ... 5 (10,847).
- ``step``: the first ``C // 2`` classes keep ``n_max`` images, the others ``int(n_max / ratio)``.
- which images: for each class in label order, its indices in file order are shuffled by one NumPy
  Mersenne-Twister stream seeded with ``data.imbalance_seed`` (Cao et al.'s ``np.random.seed(0)`` followed by
  one ``np.random.shuffle`` per class) and the first ``n_i`` are kept. The subset lists its images class by
  class in that shuffled order, as their data array does.

``n_max`` is the balanced set's images per class (the smallest class's, should they differ).
"""

from __future__ import annotations

import numpy as np
import torch

from common.data.cifar import load_cifar10, load_cifar100
from common.data.config import DataConfig
from common.data.datasets import InMemoryImageDataset
from common.data.fashion_mnist import load_fashion_mnist
from common.errors import ConfigError

IMBALANCE_PROFILES = ("exp", "step")


def longtail_counts(images_per_class: int, num_classes: int, imbalance_ratio: float,
                    profile: str = "exp") -> list[int]:
    """Images kept per class, from the head class 0 to the tail class ``num_classes - 1``."""
    if imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if num_classes < 2:
        raise ConfigError(f"a long-tailed split needs at least 2 classes, got {num_classes}")
    tail_fraction = 1.0 / imbalance_ratio
    if profile == "exp":
        return [int(images_per_class * tail_fraction ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [images_per_class] * head + [int(images_per_class * tail_fraction)] * (num_classes - head)
    raise ConfigError(f"imbalance profile must be one of {', '.join(IMBALANCE_PROFILES)}, not '{profile}'")


def longtail_indices(targets, imbalance_ratio: float, profile: str = "exp", seed: int = 0) -> torch.Tensor:
    """Indices of the long-tailed subset of a balanced training set with labels ``targets``: class by class
    in label order, each class's kept images in their shuffled order (see the module docstring)."""
    labels = np.asarray(torch.as_tensor(targets), dtype=np.int64)
    classes = np.unique(labels)
    per_class = [np.flatnonzero(labels == c) for c in classes]
    counts = longtail_counts(min(len(i) for i in per_class), len(classes), imbalance_ratio, profile)
    stream = np.random.RandomState(seed)  # the legacy global generator's algorithm: np.random.seed + shuffle
    kept = []
    for indices, count in zip(per_class, counts):
        stream.shuffle(indices)
        kept.append(indices[:count])
    return torch.from_numpy(np.concatenate(kept))


def _longtail(cfg: DataConfig, dataset: InMemoryImageDataset, split: str) -> InMemoryImageDataset:
    if split != "train":
        return dataset
    return dataset.subset(longtail_indices(dataset.targets, cfg.imbalance_ratio, cfg.imbalance_profile,
                                           cfg.imbalance_seed))


def load_cifar10_lt(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    return _longtail(cfg, load_cifar10(cfg, split), split)


def load_cifar100_lt(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    return _longtail(cfg, load_cifar100(cfg, split), split)


def load_fashion_mnist_lt(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    return _longtail(cfg, load_fashion_mnist(cfg, split), split)
