"""What every dataset shares: the `data` config section, a dataset's shape and statistics, and the
errors for files that are not there and cannot be downloaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from common.config_types import NonNegativeInt, PositiveInt, Range
from common.errors import DataError

SPLITS = ("train", "test", "unlabeled", "train+unlabeled")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    # cifar10|cifar100|stl10|imagenet|imagenet100|image_folder|hf|webdataset|fashion_mnist; long-tailed training
    # splits (common/data/longtail.py): cifar10_lt|cifar100_lt|fashion_mnist_lt; ImageNet subsets with super- and
    # subclasses (common/data/hierarchy.py): imagenet_hierarchy
    name: str = "fashion_mnist"
    root: str = "data"  # where the files are / where torchvision downloads (webdataset: folder or URL of shards.json)
    subset: PositiveInt | None = None  # use only the first N training images, stratified by class
    download: bool = True  # allow torchvision downloads when the files are missing
    num_workers: NonNegativeInt = 2  # DataLoader worker processes (per training process)
    skip_corrupt: bool = False  # corrupt image files: False -> error naming the file; True -> skip and count
    # fine | coarse: cifar100 (100 classes | 20 superclasses), fashion_mnist (10 | 4 groups, common/data/hierarchy.py),
    # imagenet_hierarchy (the subset's ImageNet classes | its superclasses)
    labels: Literal["fine", "coarse"] = "fine"
    # imagenet_hierarchy: the robustness library's ImageNet subset (VCReg Table 5; superclasses / classes:
    # 9/72, 10/60, 13/78, 16/32, 12/240; common/data/imagenet_hierarchies.md)
    hierarchy: Literal["living_9", "mixed_10", "mixed_13", "geirhos_16", "big_12"] = "living_9"
    # *_lt: n_max / n_min, the head class's training images over the tail class's (Cao et al. 2019; VCReg
    # Appendix C.3: 100)
    imbalance_ratio: Annotated[float, Range(low=1.0)] = 100.0
    # *_lt: exp (n_i = n_max * ratio^(-i / (C - 1)), Cao et al.'s CIFAR-LT) | step (half the classes n_max,
    # half n_max / ratio)
    imbalance_profile: Literal["exp", "step"] = "exp"
    imbalance_seed: NonNegativeInt = 0  # *_lt: seeds the per-class shuffle picking the images (Cao et al.: 0)
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
