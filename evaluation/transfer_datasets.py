"""The data sets of Kornblith et al.'s transfer benchmark, with their published splits and metrics.

Kornblith et al. (2019, "Do Better ImageNet Models Transfer Better?") and SimCLR's transfer appendix
evaluate on twelve data sets. Those torchvision provides are here, each with the split and the metric
those papers report (``evaluation.metrics``):

==============  ==========================================================  ========================
name            train / validation / test                                   metric
==============  ==========================================================  ========================
food101         train / held out of train / test                            top1
cifar10         train (50,000) / held out / test (10,000)                   top1
cifar100        train (50,000) / held out / test (10,000)                   top1
sun397          first of the 10 published partitions (50 + 50 per class)    top1
stanford_cars   train / held out / test                                     top1
fgvc_aircraft   train / val / test (100 variants)                           mean_per_class_accuracy
dtd             train / val / test of partition 1                           top1
oxford_pets     trainval / held out / test                                  mean_per_class_accuracy
caltech101      30 random images per class / held out of them / the rest    mean_per_class_accuracy
flowers102      train / val / test                                          mean_per_class_accuracy
==============  ==========================================================  ========================

"held out" is a stratified ``val_fraction`` of the training split (``evaluation.transfer``), used to choose
the regularisation strength before refitting on train + validation.

- CIFAR-10/100 are read by ``common.data`` from the python pickles torchvision downloads.
- SUN397: torchvision's ``SUN397`` provides the images but no split; the split is the first of the ten
  published partitions (``Training_01.txt`` / ``Testing_01.txt`` of the data set's ``Partitions.zip``,
  downloaded next to the images with ``download=true``), as Kornblith et al. use.
- Caltech-101: torchvision's ``Caltech101`` provides the files but drops the ``BACKGROUND_Google`` folder;
  here it is the 102nd class, as in Kornblith et al.'s table (102 classes, 3,060 training images). The 30
  training images of each class are drawn at random (``split_seed``): the papers publish no image list.
- Birdsnap is not in torchvision (it is published as a list of image URLs to fetch); put the images in
  ``train``/``test`` class folders and use ``dataset=image_folder`` (top-1, as Kornblith et al.).
- PASCAL VOC 2007, the twelfth, is a multi-label task: ``evaluation.voc07``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.datasets as tvd
from torchvision.datasets.utils import download_url, extract_archive

from common.data import DataConfig, build_dataset
from common.data.datasets import ImageFileDataset
from common.errors import DataError
from evaluation.metrics import MEAN_PER_CLASS, TOP1

SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"
SUN397_PARTITIONS_SHA256 = "e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9"
CALTECH101_TRAIN_PER_CLASS = 30


@dataclass(frozen=True)
class SplitRequest:
    """Where a data set is and how to split it."""

    root: str
    download: bool
    split_seed: int = 0  # the random Caltech-101 training images


# (train, validation or None, test): datasets of (PIL image or uint8 tensor, label)
Splits = tuple[object, object | None, object]


def _torchvision(class_name: str, train: str, val: str | None, test: str, **extra) -> Callable:
    """A loader of ``torchvision.datasets.<class_name>`` splits (looked up when called)."""

    def load(request: SplitRequest) -> Splits:
        constructor = getattr(tvd, class_name)

        def split(name):
            try:
                return constructor(root=request.root, split=name, download=request.download, **extra)
            except RuntimeError as error:  # torchvision: "Dataset not found or corrupted ..."
                raise DataError(f"{class_name} not found under root={request.root}: {error} "
                                "(download=true fetches it where torchvision can)") from None

        return split(train), (split(val) if val else None), split(test)

    return load


def _cifar(name: str) -> Callable:
    def load(request: SplitRequest) -> Splits:
        data = DataConfig(name=name, root=request.root, download=request.download)
        return build_dataset(data, "train"), None, build_dataset(data, "test")

    return load


def _sun397_partition_file(folder: Path, name: str, download: bool) -> Path:
    candidates = [folder / name, folder / "Partitions" / name]
    if not any(path.is_file() for path in candidates) and download:
        archive = folder / "Partitions.zip"
        download_url(SUN397_PARTITIONS_URL, str(folder), archive.name)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SUN397_PARTITIONS_SHA256:
            raise DataError(f"{archive} has SHA-256 {digest}, not the published {SUN397_PARTITIONS_SHA256}")
        extract_archive(str(archive), str(folder))
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"SUN397 partition file {name} not found in {folder} or {folder / 'Partitions'} "
                    f"(download=true fetches {SUN397_PARTITIONS_URL})")


def load_sun397(request: SplitRequest, partition: int = 1) -> Splits:
    """Images of torchvision's SUN397 split by the published ``Training_NN.txt`` / ``Testing_NN.txt``."""
    try:
        full = tvd.SUN397(root=request.root, download=request.download)
    except RuntimeError as error:
        raise DataError(f"SUN397 not found under root={request.root}: {error}") from None
    folder = Path(request.root) / "SUN397"

    def split(kind: str) -> ImageFileDataset:
        listing = _sun397_partition_file(folder, f"{kind}_{partition:02d}.txt", request.download)
        lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        files = [folder / line.lstrip("/") for line in lines]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(files)} images listed in {listing} are missing "
                            f"(e.g. {missing[0]})")
        try:
            labels = [full.class_to_idx["/".join(Path(line.lstrip("/")).parts[1:-1])] for line in lines]
        except KeyError as error:
            raise DataError(f"{listing} names a class not in {folder / 'ClassName.txt'}: {error}") from None
        return ImageFileDataset(files, torch.tensor(labels), full.classes, skip_corrupt=False)

    return split("Training"), None, split("Testing")


def load_caltech101(request: SplitRequest, train_per_class: int = CALTECH101_TRAIN_PER_CLASS) -> Splits:
    """The 102 folders of ``101_ObjectCategories`` (background included): ``train_per_class`` random images
    of each class for training (seeded by ``request.split_seed``), the rest for test."""
    try:
        tvd.Caltech101(root=request.root, download=request.download)  # checks or downloads the files
    except RuntimeError as error:
        raise DataError(f"Caltech-101 not found under root={request.root}: {error}") from None
    folder = Path(request.root) / "caltech101" / "101_ObjectCategories"
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
    generator = torch.Generator().manual_seed(request.split_seed)
    split_files: dict[str, list[Path]] = {"train": [], "test": []}
    split_labels: dict[str, list[int]] = {"train": [], "test": []}
    for label, name in enumerate(classes):
        files = sorted((folder / name).glob("*.jpg"))
        if len(files) <= train_per_class:
            raise DataError(f"Caltech-101 class '{name}' has {len(files)} images; the split needs more than "
                            f"{train_per_class}")
        order = torch.randperm(len(files), generator=generator).tolist()
        for kind, rows in (("train", sorted(order[:train_per_class])), ("test", sorted(order[train_per_class:]))):
            split_files[kind] += [files[i] for i in rows]
            split_labels[kind] += [label] * len(rows)
    train, test = (ImageFileDataset(split_files[k], torch.tensor(split_labels[k]), classes, skip_corrupt=False)
                   for k in ("train", "test"))
    return train, None, test


@dataclass(frozen=True)
class TransferDataset:
    load: Callable[[SplitRequest], Splits]
    metric: str  # the score Kornblith et al. report: top1 or mean_per_class_accuracy


TRANSFER_DATASETS = {
    "food101": TransferDataset(_torchvision("Food101", "train", None, "test"), TOP1),
    "cifar10": TransferDataset(_cifar("cifar10"), TOP1),
    "cifar100": TransferDataset(_cifar("cifar100"), TOP1),
    "sun397": TransferDataset(load_sun397, TOP1),
    "stanford_cars": TransferDataset(_torchvision("StanfordCars", "train", None, "test"), TOP1),
    "fgvc_aircraft": TransferDataset(_torchvision("FGVCAircraft", "train", "val", "test",
                                                  annotation_level="variant"), MEAN_PER_CLASS),
    "dtd": TransferDataset(_torchvision("DTD", "train", "val", "test", partition=1), TOP1),
    "oxford_pets": TransferDataset(_torchvision("OxfordIIITPet", "trainval", None, "test",
                                                target_types="category"), MEAN_PER_CLASS),
    "caltech101": TransferDataset(load_caltech101, MEAN_PER_CLASS),
    "flowers102": TransferDataset(_torchvision("Flowers102", "train", "val", "test"), MEAN_PER_CLASS),
}
