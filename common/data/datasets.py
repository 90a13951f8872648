"""The dataset classes every loader returns, class-balanced subsets and the seeded multi-view wrapper.

In-memory datasets hold one contiguous uint8 tensor (the trainer indexes and augments whole batches of it on
the device); file-backed ones decode lazily and name the file of an image they cannot read.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.data.pixels import to_mode
from common.data.skip_record import SkipTracking, one_line
from common.errors import ConfigError, DataError

# What PIL raises for a file it cannot open or decode (SyntaxError: some malformed PNG/GIF headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError)


class CorruptImageError(DataError):
    """An image file that cannot be decoded; the message is one line naming the file.

    An error raised in a DataLoader worker reaches the main process as ``CorruptImageError(text)`` where
    ``text`` is the worker's formatted traceback (torch re-raises the type with that text as its message);
    the constructor keeps the traceback's last line, the worker's own message, so the main process reports
    the same line as without workers. The full text stays in ``worker_traceback``.
    """

    def __init__(self, message: str):
        self.worker_traceback = ""
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[0].startswith(f"Caught {type(self).__name__}"):
            self.worker_traceback = message
            message = lines[-1].partition(f"{type(self).__name__}: ")[2] or lines[-1]
        super().__init__(message)


def corrupt_image_error(where: str, error: Exception) -> CorruptImageError:
    """The one-line error for the undecodable image ``where`` ("file X", "sample K of shard U")."""
    return CorruptImageError(f"corrupt or unreadable image {where}: {one_line(error)} "
                             "(set data.skip_corrupt=true to skip it)")


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


class _DecodingDataset(Dataset, SkipTracking, abc.ABC):
    """Decodes images lazily into ``mode`` ("RGB", or "L" for grayscale data); a corrupt one raises, or
    with ``skip_corrupt`` is replaced by the next readable sample.

    Skipped samples are marked in ``corrupt``, a uint8 tensor in shared memory, so the main process sees what
    its DataLoader workers found (each epoch's workers are new processes). A sample is marked and reported
    only when it is itself requested, never when it is passed over while looking for another sample's
    replacement: each index is requested at most once per epoch and process, so no two workers ever mark
    the same sample at once and each file is reported once per process, whatever the epochs and workers, and
    once per run whatever the data sets that read it (``common.data.skip_record``).
    """

    def __init__(self, targets: torch.Tensor, skip_corrupt: bool, mode: str = "RGB"):
        self.targets = targets.to(torch.int64)
        self.skip_corrupt = skip_corrupt
        self.mode = mode
        self.corrupt = torch.zeros(len(self.targets), dtype=torch.uint8).share_memory_()
        self.track_skips()

    @abc.abstractmethod
    def _source(self, index: int):
        """A path or a binary file object holding sample ``index``'s encoded image."""

    @abc.abstractmethod
    def _describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""

    def __len__(self) -> int:
        return len(self.targets)

    def header(self, index: int) -> tuple[str, tuple[int, int]]:
        """PIL mode and (width, height) of sample ``index``, read from the file header without decoding."""
        try:
            with Image.open(self._source(index)) as image:
                return image.mode, image.size
        except DECODE_ERRORS as error:
            raise self._corrupt_error(index, error) from error

    def decode(self, index: int) -> Image.Image:
        """Sample ``index``'s image in ``mode``; a corrupt one raises ``CorruptImageError``."""
        try:
            return self._decode(index)
        except DECODE_ERRORS as error:
            raise self._corrupt_error(index, error) from error

    def _decode(self, index: int) -> Image.Image:
        with Image.open(self._source(index)) as image:
            return to_mode(image, self.mode)

    def _corrupt_error(self, index: int, error: Exception) -> CorruptImageError:
        return corrupt_image_error(self._describe(index), error)

    def encoded(self, index: int) -> tuple[bytes, str]:
        """Sample ``index``'s file as stored, not decoded (so a corrupt one stays corrupt), and its extension
        ("png", "jpg": a file's own suffix, else the format that PIL recognises)."""
        source = self._source(index)
        if not isinstance(source, io.BytesIO):
            return Path(source).read_bytes(), Path(source).suffix.lower().lstrip(".")
        try:
            with Image.open(source) as image:
                image_format = image.format
        except DECODE_ERRORS as error:
            raise self._corrupt_error(index, error) from error
        return source.getvalue(), {"JPEG": "jpg", "TIFF": "tif"}.get(image_format, image_format.lower())

    @property
    def skipped(self) -> list[str]:
        """The samples found corrupt and skipped so far, by this process and its workers."""
        return [self._describe(i) for i in self.corrupt.nonzero().flatten().tolist()]

    @property
    def num_skipped(self) -> int:
        return int(self.corrupt.sum())

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                return self._decode(i), int(self.targets[i])
            except DECODE_ERRORS as error:
                if not self.skip_corrupt:
                    raise self._corrupt_error(i, error) from error
                if offset == 0:
                    self.mark_skipped(i, self._describe(i), error)
        raise CorruptImageError(f"every image of this dataset is unreadable ({len(self)} images)")


class ImageFileDataset(_DecodingDataset):
    """Image files with integer labels (-1 for an unlabelled folder)."""

    def __init__(self, files: list[Path], targets: torch.Tensor, classes: list[str], skip_corrupt: bool,
                 mode: str = "RGB"):
        super().__init__(targets, skip_corrupt, mode)
        self.files = files
        self.classes = classes

    def _source(self, index: int) -> Path:
        return self.files[index]

    def _describe(self, index: int) -> str:
        return f"file {self.files[index]}"

    def subset(self, indices: Sequence[int]) -> ImageFileDataset:
        return ImageFileDataset([self.files[i] for i in indices], self.targets[list(indices)], self.classes,
                                self.skip_corrupt, self.mode)


class HFImageDataset(_DecodingDataset):
    """A Hugging Face ``datasets.Dataset`` whose image column is decoded here (so errors name the file)."""

    def __init__(self, table, image_column: str, targets: torch.Tensor, classes: list[str], origin: str,
                 skip_corrupt: bool, mode: str = "RGB"):
        super().__init__(targets, skip_corrupt, mode)
        self.table = table
        self.image_column = image_column
        self.classes = classes
        self.origin = origin

    def _source(self, index: int):
        cell = self.table[index][self.image_column]
        if cell.get("bytes") is not None:
            return io.BytesIO(cell["bytes"])
        if cell.get("path"):
            return cell["path"]
        raise DataError("the image cell holds neither bytes nor a path")

    def _describe(self, index: int) -> str:
        path = self.table[index][self.image_column].get("path")
        return f"file {path} (row {index} of {self.origin})" if path else f"row {index} of {self.origin}"

    def subset(self, indices: Sequence[int]) -> HFImageDataset:
        return HFImageDataset(self.table.select(list(indices)), self.image_column, self.targets[list(indices)],
                              self.classes, self.origin, self.skip_corrupt, self.mode)


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
        return view_seed(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        image, label = self.dataset[index]
        return seeded_views(self.transforms, image, self.sample_seed(index)), label


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s views in ``epoch``: a function of the three numbers alone."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def seeded_views(transforms: Sequence[Callable], image, seed: int) -> list:
    """``[transform(image) for transform in transforms]`` with torch's RNG seeded by ``seed``; the caller's global
    RNG is left as it was (fork_rng), which matters when loading happens in the main process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [transform(image) for transform in transforms]


def skipped_files(dataset: Dataset) -> list[str]:
    """The corrupt images skipped so far (``data.skip_corrupt=true``) by this process and its DataLoader
    workers, each once; ``[]`` for in-memory data. For the whole run, gather the lists of every process. Looks through ``MultiViewDataset`` wrappers."""
    while isinstance(dataset, MultiViewDataset):
        dataset = dataset.dataset
    return list(getattr(dataset, "skipped", []))


def stratified_subset(targets, n: int) -> list[int]:
    """Indices of the first ``n`` images taken class by class in turn (round robin over the sorted
    labels, each class in file order), returned in ascending order. Deterministic and class-balanced;
    a class that runs out leaves its share to the others."""
    labels = np.asarray(torch.as_tensor(targets), dtype=np.int64)
    if not 1 <= n <= len(labels):
        raise ConfigError(f"data.subset={n} must be between 1 and the number of training images ({len(labels)})")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(labels)) - first_of_class
    picked = order[np.lexsort((sorted_labels, rank_in_class))[:n]]
    return sorted(picked.tolist())
