"""The dataset classes every loader returns, class-balanced subsets and the seeded multi-view wrapper.

In-memory datasets hold one contiguous uint8 tensor (the trainer indexes and augments whole batches of it on
the device); file-backed ones decode lazily and name the file of an image they cannot read.
"""

from __future__ import annotations

import abc
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


class InMemoryImageDataset(Dataset):
    """Images as one contiguous uint8 tensor ``[N, C, H, W]`` with int64 ``targets`` ``[N]``."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must have shape [{images.shape[0]}], got {tuple(targets.shape)}")
        self.images = images.contiguous()
        self.targets = targets.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def subset(self, indices: Sequence[int]) -> InMemoryImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return InMemoryImageDataset(self.images[idx], self.targets[idx])


class _DecodingDataset(Dataset, abc.ABC):
    """Decodes images lazily; a corrupt one raises, or with ``skip_corrupt`` is replaced by the next
    readable sample and recorded in ``skipped`` (per process: each DataLoader worker keeps its own)."""

    targets: torch.Tensor

    def __init__(self, skip_corrupt: bool):
        self.skip_corrupt = skip_corrupt
        self.skipped: set[str] = set()

    @abc.abstractmethod
    def _decode(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index``."""

    @abc.abstractmethod
    def _describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                return self._decode(i), int(self.targets[i])
            except (OSError, SyntaxError, ValueError) as error:
                name = self._describe(i)
                if not self.skip_corrupt:
                    raise CorruptImageError(
                        f"corrupt or unreadable image {name}: {error} (set data.skip_corrupt=true to skip it)"
                    ) from error
                if name not in self.skipped:
                    self.skipped.add(name)
                    warnings.warn(f"skipping corrupt image {name} ({len(self.skipped)} skipped so far)")
        raise CorruptImageError(f"every image of this dataset is unreadable ({len(self.skipped)} skipped)")


def _open_rgb(source) -> Image.Image:
    with Image.open(source) as image:
        return image.convert("RGB")  # convert() forces the full decode, so truncation is caught here


class ImageFileDataset(_DecodingDataset):
    """Image files with integer labels (-1 for an unlabelled folder)."""

    def __init__(self, files: list[Path], targets: torch.Tensor, classes: list[str], skip_corrupt: bool):
        super().__init__(skip_corrupt)
        self.files = files
        self.targets = targets.to(torch.int64)
        self.classes = classes

    def _decode(self, index: int) -> Image.Image:
        return _open_rgb(self.files[index])

    def _describe(self, index: int) -> str:
        return f"file {self.files[index]}"

    def subset(self, indices: Sequence[int]) -> ImageFileDataset:
        return ImageFileDataset(
            [self.files[i] for i in indices], self.targets[list(indices)], self.classes, self.skip_corrupt
        )


class HFImageDataset(_DecodingDataset):
    """A Hugging Face ``datasets.Dataset`` whose image column is decoded here (so errors name the file)."""

    def __init__(self, table, image_column: str, targets: torch.Tensor, classes: list[str], origin: str,
                 skip_corrupt: bool):
        super().__init__(skip_corrupt)
        self.table = table
        self.image_column = image_column
        self.targets = targets.to(torch.int64)
        self.classes = classes
        self.origin = origin

    def _decode(self, index: int) -> Image.Image:
        cell = self.table[index][self.image_column]
        if cell.get("bytes") is not None:
            return _open_rgb(io.BytesIO(cell["bytes"]))
        if cell.get("path"):
            return _open_rgb(cell["path"])
        raise ValueError("the image cell holds neither bytes nor a path")

    def _describe(self, index: int) -> str:
        path = self.table[index][self.image_column].get("path")
        return f"file {path} (row {index} of {self.origin})" if path else f"row {index} of {self.origin}"

    def subset(self, indices: Sequence[int]) -> HFImageDataset:
        return HFImageDataset(self.table.select(list(indices)), self.image_column, self.targets[list(indices)],
                              self.classes, self.origin, self.skip_corrupt)


class MultiViewDataset(Dataset):
    """``dataset[i]`` -> ``([transform(image) for transform in transforms], label)``.

    Each sample's randomness is seeded from ``(seed, epoch, index)``, so the views depend neither on
    the number of DataLoader workers nor on where a resumed run restarts. ``set_epoch`` must be called
    before the DataLoader iterator of that epoch is created (workers copy the dataset at that moment,
    so do not combine it with ``persistent_workers``).
    """

    def __init__(self, dataset: Dataset, transforms: list[Callable], seed: int):
        if not transforms:
            raise ValueError("MultiViewDataset needs at least one view transform")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.transforms = list(transforms)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        image, label = self.dataset[index]
        # fork_rng keeps the caller's global RNG untouched when loading happens in the main process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.sample_seed(index))
            views = [transform(image) for transform in self.transforms]
        return views, label



def stratified_subset(targets, n: int) -> list[int]:
    """Indices of the first ``n`` images taken class by class in turn (round robin over the sorted
    labels, each class in file order), returned in ascending order. Deterministic and class-balanced;
    a class that runs out leaves its share to the others."""
    labels = np.asarray(torch.as_tensor(targets), dtype=np.int64)
    if not 1 <= n <= len(labels):
        raise ValueError(f"data.subset={n} must be between 1 and the number of training images ({len(labels)})")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(labels)) - first_of_class
    picked = order[np.lexsort((sorted_labels, rank_in_class))[:n]]
    return sorted(picked.tolist())
