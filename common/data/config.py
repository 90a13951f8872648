"""What every dataset shares: the `data` config section, a dataset's shape and statistics, and the
errors for files that are not there and cannot be downloaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.config_types import NonNegativeInt, PositiveInt
from common.errors import DataError

SPLITS = ("train", "test", "unlabeled", "train+unlabeled")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # cifar10|cifar100|stl10|imagenet|imagenet100|image_folder|hf|webdataset|fashion_mnist
    root: str = "data"  # where the files are / where torchvision downloads (webdataset: folder or URL of shards.json)
    subset: PositiveInt | None = None  # use only the first N training images, stratified by class
    download: bool = True  # allow torchvision downloads when the files are missing
    num_workers: NonNegativeInt = 2  # DataLoader worker processes (per training process)
    skip_corrupt: bool = False  # corrupt image files: False -> error naming the file; True -> skip and count
    labels: Literal["fine", "coarse"] = "fine"  # cifar100: fine (100 classes) | coarse (20 superclasses)
    image_column: str = "image"  # hf datasets
    label_column: str = "label"  # hf datasets; "" means unlabelled (label -1)
    train_split: str = "train"  # folder / hf split names for image_folder, hf, imagenet
    test_split: str = "val"  # the evaluation split's folder / hf split name
    image_size: int | None = None  # image_folder/hf: the images' size; None = read from the files (imagenet*: 224)


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    image_size: int  # native size; 224 (the crop size) for folders of large or variable-size images
    num_classes: int  # 0 for an unlabelled folder
    mean: tuple[float, ...]
    std: tuple[float, ...]


def missing_files(cfg: DataConfig, path: Path, expected: str) -> DataError:
    """The error for dataset files that are not on disk (and were not downloaded)."""
    hint = "" if cfg.download else " (data.download=false, so nothing was downloaded)"
    return DataError(f"{path} not found: expected {expected} for dataset '{cfg.name}'{hint}")


def download(cfg: DataConfig, fetch: Callable[[], object], folder: Path, expected: str) -> None:
    """Run torchvision's download ``fetch``; without network, one line naming the files and where they go."""
    try:
        fetch()
    # URLError, timeouts and HTTP errors are OSErrors; torchvision reports failed mirrors and checksums as
    # RuntimeErrors whose last line is the last failure.
    except (OSError, RuntimeError) as error:
        lines = str(getattr(error, "reason", None) or error).strip().splitlines()
        reason = lines[-1] if lines else type(error).__name__
        raise DataError(f"cannot download dataset '{cfg.name}' ({reason}): put {expected} in {folder}, "
                        "or point data.root at a folder that has them") from error
