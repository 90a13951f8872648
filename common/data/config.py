"""What every dataset shares: the `data` config section, a dataset's shape and statistics, and the
error for files that are not there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test", "unlabeled", "train+unlabeled")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # cifar10|cifar100|stl10|imagenet|imagenet100|image_folder|hf|fashion_mnist
    root: str = "data"  # where the files are / where torchvision downloads
    subset: int | None = None  # use only the first N training images, stratified by class
    download: bool = True  # allow torchvision downloads when the files are missing
    num_workers: int = 2
    skip_corrupt: bool = False  # corrupt image files: False -> error naming the file; True -> skip and count
    labels: str = "fine"  # cifar100: fine (100 classes) | coarse (20 superclasses)
    image_column: str = "image"  # hf datasets
    label_column: str = "label"  # hf datasets; "" means unlabelled (label -1)
    train_split: str = "train"  # folder / hf split names for image_folder, hf, imagenet
    test_split: str = "val"


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    image_size: int  # native size; 224 (the crop size) for folders of variable-size images
    num_classes: int  # 0 for an unlabelled folder
    mean: tuple[float, ...]
    std: tuple[float, ...]


def missing_files(cfg: DataConfig, path: Path, expected: str) -> FileNotFoundError:
    """The error for dataset files that are not on disk (and were not downloaded)."""
    hint = "" if cfg.download else " (data.download=false, so nothing was downloaded)"
    return FileNotFoundError(f"{path} not found: expected {expected} for dataset '{cfg.name}'{hint}")
