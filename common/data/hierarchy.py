"""Data sets with two levels of labels (VCReg, Table 5 and Appendix C.2): a network trained on the coarse labels
(``data.labels=coarse``) is probed on the fine ones (``data.labels=fine``).

- ``data.name=imagenet_hierarchy``, ``data.hierarchy`` = living_9 | mixed_10 | mixed_13 | geirhos_16 | big_12:
  an ImageNet folder (root/<train_split|test_split>/<WordNet id>/...) restricted to the subset's ImageNet
  classes. Fine labels: those classes, in the order of ``imagenet_hierarchies.json`` (superclass by superclass,
  WordNet ids sorted within each); coarse labels: their superclass's position in the subset. The lists, and
  how they were derived from the robustness library's definitions, are in ``imagenet_hierarchies.md``.
- ``data.name=fashion_mnist`` with ``data.labels=coarse``: Fashion-MNIST's 10 classes grouped into 4 (a
  CPU-sized analogue of CIFAR-100's superclasses; our grouping, not from a paper): tops {T-shirt/top, Pullover,
  Coat, Shirt, Dress}, footwear {Sandal, Sneaker, Ankle boot}, {Trouser} and {Bag}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from common.data.config import DataConfig
from common.data.datasets import ImageFileDataset, InMemoryImageDataset
from common.data.fashion_mnist import load_fashion_mnist
from common.data.folders import load_image_folder

IMAGENET_HIERARCHIES_FILE = Path(__file__).with_name("imagenet_hierarchies.json")
IMAGENET_HIERARCHIES = ("living_9", "mixed_10", "mixed_13", "geirhos_16", "big_12")

# Fashion-MNIST's labels: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker,
# 8 Bag, 9 Ankle boot.
FASHION_MNIST_GROUPS = (("tops", (0, 2, 4, 6, 3)), ("footwear", (5, 7, 9)), ("trouser", (1,)), ("bag", (8,)))


def coarse_of_fine(groups: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``mapping[fine] = coarse`` for groups of fine labels (group ``g`` is coarse label ``g``)."""
    mapping = torch.full((sum(len(g) for g in groups),), -1, dtype=torch.int64)
    for coarse, fine in enumerate(groups):
        mapping[list(fine)] = coarse
    return mapping


FASHION_MNIST_COARSE = coarse_of_fine(tuple(fine for _, fine in FASHION_MNIST_GROUPS))


@dataclass(frozen=True)
class ImageNetHierarchy:
    """One subset: superclass WordNet ids and names (label order) and each superclass's ImageNet classes."""

    superclasses: tuple[str, ...]
    names: tuple[str, ...]
    subclasses: tuple[tuple[str, ...], ...]

    @property
    def fine_classes(self) -> list[str]:
        """The fine labels' WordNet ids: superclass by superclass."""
        return [wnid for group in self.subclasses for wnid in group]

    @property
    def coarse_of_fine(self) -> torch.Tensor:
        index = {wnid: i for i, wnid in enumerate(self.fine_classes)}
        return coarse_of_fine([tuple(index[w] for w in group) for group in self.subclasses])


@cache
def imagenet_hierarchy(name: str) -> ImageNetHierarchy:
    """The subset ``name`` (one of ``IMAGENET_HIERARCHIES``) from ``imagenet_hierarchies.json``."""
    if name not in IMAGENET_HIERARCHIES:
        raise ValueError(f"unknown ImageNet hierarchy '{name}' (valid: {', '.join(IMAGENET_HIERARCHIES)})")
    entries = json.loads(IMAGENET_HIERARCHIES_FILE.read_text())[name]
    return ImageNetHierarchy(tuple(e["wnid"] for e in entries), tuple(e["name"] for e in entries),
                             tuple(tuple(e["subclasses"]) for e in entries))


def hierarchy_num_classes(cfg: DataConfig) -> int:
    """Classes of ``imagenet_hierarchy`` under ``cfg.labels``: superclasses (coarse) or subclasses (fine)."""
    hierarchy = imagenet_hierarchy(cfg.hierarchy)
    return len(hierarchy.superclasses) if cfg.labels == "coarse" else len(hierarchy.fine_classes)


def load_imagenet_hierarchy(cfg: DataConfig, split: str) -> ImageFileDataset:
    hierarchy = imagenet_hierarchy(cfg.hierarchy)
    dataset = load_image_folder(cfg, split, classes=hierarchy.fine_classes)
    if cfg.labels == "fine":
        return dataset
    return ImageFileDataset(dataset.files, hierarchy.coarse_of_fine[dataset.targets], list(hierarchy.superclasses),
                            dataset.skip_corrupt, dataset.mode)


def load_fashion_mnist_labels(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    """Fashion-MNIST with its 10 classes (``data.labels=fine``) or their 4 groups (``coarse``)."""
    dataset = load_fashion_mnist(cfg, split)
    if cfg.labels == "fine":
        return dataset
    return InMemoryImageDataset(dataset.images, FASHION_MNIST_COARSE[dataset.targets])
