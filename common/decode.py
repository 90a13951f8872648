"""The loader side of ``augment.on=device`` for image files: decode and crop only, the rest on the device.

Loader workers either decode each image and cut its random resized crops to their output sizes
(``crop_views``, ``augment.decode=cpu``), or read the encoded JPEG and draw its crop boxes from the file's
header alone, leaving the decoding (nvJPEG, ``torchvision.io.decode_jpeg(device=...)``) and the crops to the
training device (``EncodedCrops`` and ``decode_and_crop``, ``augment.decode=gpu``). Either way a sample's boxes
come from ``common.data.MultiViewDataset``'s seeding by ``(seed, epoch, index)`` and from the same
``v2.RandomResizedCrop`` objects (``common.augment.build_crop_transforms``), so both decoders cut the same boxes,
and the per-image pipelines draw them from the same distribution.

Anything that is not a JPEG file of an image folder or a Hugging Face data set (a PNG, a data set that yields
decoded images) is decoded in the worker, and a JPEG that nvJPEG cannot read is decoded by the data set itself,
which names the file or skips it (``data.skip_corrupt``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from common.data import HFImageDataset, ImageFileDataset, MultiViewDataset

JPEG_MAGIC = b"\xff\xd8"


class ConvertedImages(Dataset):
    """``dataset[i]`` with its image turned into a uint8 tensor by ``to_uint8``."""

    def __init__(self, dataset: Dataset, to_uint8: Callable):
        self.dataset, self.to_uint8 = dataset, to_uint8

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.to_uint8(image), label


def crop_views(dataset: Dataset, to_uint8: Callable, crops: Sequence[v2.RandomResizedCrop],
               seed: int) -> MultiViewDataset:
    """``[i] -> ([uint8 crop per view], label)``: what a loader worker hands over with ``augment.decode=cpu``."""
    return MultiViewDataset(ConvertedImages(dataset, to_uint8), list(crops), seed)


def encoded_jpeg(dataset: Dataset, index: int) -> bytes | None:
    """The JPEG file of sample ``index`` of an image folder or a Hugging Face data set, as bytes; ``None`` for
    other formats, other data sets and files that cannot be read (the data set's own decoding then reports them)."""
    try:
        if isinstance(dataset, ImageFileDataset):
            data = Path(dataset.files[index]).read_bytes()
        elif isinstance(dataset, HFImageDataset):
            cell = dataset.table[index][dataset.image_column]
            data = cell.get("bytes") or (Path(cell["path"]).read_bytes() if cell.get("path") else None)
        else:
            return None
    except OSError:
        return None
    return data if data is not None and data[:2] == JPEG_MAGIC else None


@dataclass
class _Source:
    """An image as a worker ships it: JPEG bytes (1-D uint8) or decoded pixels, and what its size is read from."""

    payload: torch.Tensor
    sized: object  # a header-only PIL image or the decoded tensor: all a crop needs to draw its box
    index: int


@dataclass
class EncodedSample:
    payload: torch.Tensor  # JPEG bytes, or a decoded uint8 image [c, h, w]
    boxes: torch.Tensor  # [views, 4]: top, left, height, width of each view's crop
    index: int


class _Sources(Dataset):
    def __init__(self, dataset: Dataset, to_uint8: Callable, decode: bool):
        self.dataset, self.to_uint8, self.decode = dataset, to_uint8, decode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[_Source, int]:
        data = None if self.decode else encoded_jpeg(self.dataset, index)
        header = None if data is None else _header(data)
        if header is None:
            image, label = self.dataset[index]
            pixels = self.to_uint8(image)
            return _Source(pixels, pixels, index), label
        return _Source(torch.frombuffer(bytearray(data), dtype=torch.uint8), header, index), int(
            self.dataset.targets[index])


def _header(data: bytes) -> Image.Image | None:
    """The image of ``data`` opened lazily (its header read: the size, no pixels); ``None`` if unreadable."""
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError):
        return None


class _DrawBoxes:
    """One transform for ``MultiViewDataset`` that draws every view's box, in the order the crops would."""

    def __init__(self, crops: Sequence[v2.RandomResizedCrop]):
        self.crops = list(crops)

    def __call__(self, source: _Source) -> EncodedSample:
        params = [crop.make_params([source.sized]) for crop in self.crops]
        boxes = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in params], dtype=torch.int64)
        return EncodedSample(source.payload, boxes, source.index)


class EncodedCrops(Dataset):
    """``[i] -> EncodedSample``: what a loader worker hands over with ``augment.decode=gpu`` (no decoding)."""

    def __init__(self, dataset: Dataset, to_uint8: Callable, crops: Sequence[v2.RandomResizedCrop], seed: int):
        self.crops = list(crops)
        self.encoded = MultiViewDataset(_Sources(dataset, to_uint8, decode=False), [_DrawBoxes(crops)], seed)
        self.decoded = MultiViewDataset(_Sources(dataset, to_uint8, decode=True), [_DrawBoxes(crops)], seed)

    def __len__(self) -> int:
        return len(self.encoded)

    def set_epoch(self, epoch: int) -> None:
        self.encoded.set_epoch(epoch)
        self.decoded.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[EncodedSample, int]:
        (sample,), label = self.encoded[index]
        return sample, label

    def decoded_sample(self, index: int) -> EncodedSample:
        """Sample ``index`` decoded by the data set itself (same seed: the same boxes for the same image)."""
        (sample,), _ = self.decoded[index]
        return sample

    @staticmethod
    def collate(items: list[tuple[EncodedSample, int]]) -> tuple[list[EncodedSample], torch.Tensor]:
        return [sample for sample, _ in items], torch.tensor([label for _, label in items], dtype=torch.int64)


def _decode_all(samples: list[EncodedSample], source: EncodedCrops, channels: int, device) -> list[torch.Tensor]:
    """Every sample's uint8 image on ``device``; failed JPEGs are replaced in ``samples`` by the data set's decoding."""
    jpegs = [k for k, s in enumerate(samples) if s.payload.ndim == 1]
    images: list[torch.Tensor | None] = [None if k in jpegs else samples[k].payload.to(device) for k in
                                         range(len(samples))]
    try:
        decoded = decode_jpeg([samples[k].payload for k in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one to find it
        decoded = []
        for k in jpegs:
            try:
                decoded.append(decode_jpeg(samples[k].payload, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    for k, image in zip(jpegs, decoded):
        if image is None:
            samples[k] = source.decoded_sample(samples[k].index)
            images[k] = samples[k].payload.to(device)
        else:
            images[k] = v2.functional.rgb_to_grayscale(image) if channels == 1 else image
    return images


def decode_and_crop(samples: list[EncodedSample], source: EncodedCrops, channels: int,
                    device: torch.device | str) -> list[torch.Tensor]:
    """Decode a batch of ``EncodedSample`` on ``device`` (nvJPEG on a GPU) and cut each view's boxes: one uint8
    batch ``[n, channels, size, size]`` per view, the crops ``crop_views`` would have made in the workers."""
    samples = list(samples)
    images = _decode_all(samples, source, channels, device)
    views = []
    for view, crop in enumerate(source.crops):
        views.append(torch.stack([
            v2.functional.resized_crop(image, *sample.boxes[view].tolist(), size=list(crop.size),
                                       interpolation=crop.interpolation, antialias=crop.antialias)
            for image, sample in zip(images, samples)]))
    return views
