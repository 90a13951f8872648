"""Dataset registry: real on-disk formats, class-balanced subsets and a seeded multi-view wrapper.

Every dataset yields ``(image, label)`` with ``image`` a PIL image (file-backed data) or a uint8 tensor
``[C, H, W]`` (in-memory data) and ``label`` an int, -1 for unlabelled images. Small datasets (CIFAR,
STL-10, Fashion-MNIST) are held in memory as one contiguous uint8 tensor so the trainer can index and
augment whole batches on the training device.
"""

from __future__ import annotations

import abc
import gzip
import io
import os
import pickle
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

DATASET_NAMES = ("cifar10", "cifar100", "stl10", "imagenet", "imagenet100", "image_folder", "hf", "fashion_mnist")
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
IMAGENET100_CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")
# Debian's `dataset-fashion-mnist` package installs the four IDX .gz files here.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

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


# Per-channel statistics of the training images in [0, 1].
_IN_MEMORY_INFO = {
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DatasetInfo(3, 96, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "fashion_mnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,)),
}


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


# ----------------------------------------------------------------------------------------------------------
# Dataset classes


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


# ----------------------------------------------------------------------------------------------------------
# Subsets


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


# ----------------------------------------------------------------------------------------------------------
# Info


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
        info = _IN_MEMORY_INFO["cifar100"]
        return DatasetInfo(info.channels, info.image_size, 20, info.mean, info.std)
    if cfg.name in _IN_MEMORY_INFO:
        return _IN_MEMORY_INFO[cfg.name]
    if cfg.name == "imagenet":
        num_classes = 1000
    elif cfg.name == "imagenet100":
        num_classes = len(imagenet100_classes())
    elif cfg.name == "image_folder":
        num_classes = len(_class_folders(_image_folder_root(cfg, "train")))
    else:
        num_classes = len(_load_hf(cfg, "train").classes)
    return DatasetInfo(3, 224, num_classes, IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------------------------------------
# Building


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ("train" | "test" | "unlabeled" | "train+unlabeled") of ``cfg.name``; ``cfg.subset``
    keeps the first N images of every split but "test", stratified by class."""
    _check_name(cfg)
    valid = SPLITS if cfg.name == "stl10" else ("train", "test")
    if split not in valid:
        raise ValueError(f"dataset '{cfg.name}' has no split '{split}' (valid: {', '.join(valid)})")
    loaders = {
        "cifar10": _load_cifar10,
        "cifar100": _load_cifar100,
        "stl10": _load_stl10,
        "fashion_mnist": _load_fashion_mnist,
        "imagenet": _load_image_folder,
        "imagenet100": _load_image_folder,
        "image_folder": _load_image_folder,
        "hf": _load_hf,
    }
    dataset = loaders[cfg.name](cfg, split)
    if cfg.subset is not None and split != "test":
        dataset = dataset.subset(stratified_subset(dataset.targets, cfg.subset))
    return dataset


def _missing(cfg: DataConfig, path: Path, expected: str) -> FileNotFoundError:
    hint = "" if cfg.download else " (data.download=false, so nothing was downloaded)"
    return FileNotFoundError(f"{path} not found: expected {expected} for dataset '{cfg.name}'{hint}")


# CIFAR: python pickles of {'data': uint8 [N, 3072] (R, G, B planes, row-major), 'labels' | 'fine_labels'...}


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a CIFAR python pickle: {error}") from error


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_cifar_pickle(path)
    for key in ("data", label_key):
        if key not in entry:
            raise ValueError(f"{path} has no '{key}' entry (keys: {', '.join(map(str, entry))})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32), np.asarray(entry[label_key], dtype=np.int64)


def _cifar(cfg: DataConfig, folder_name: str, files: list[str], label_key: str, downloader) -> InMemoryImageDataset:
    folder = Path(cfg.root) / folder_name
    if not all((folder / f).is_file() for f in files):
        if not cfg.download:
            raise _missing(cfg, folder, f"the python-pickle files {', '.join(files)}")
        downloader(root=cfg.root, download=True)
    parts = [_cifar_arrays(folder / f, label_key) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    targets = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return InMemoryImageDataset(images, targets)


def _load_cifar10(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    from torchvision.datasets import CIFAR10

    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _cifar(cfg, "cifar-10-batches-py", files, "labels", CIFAR10)


def _load_cifar100(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    from torchvision.datasets import CIFAR100

    label_key = "coarse_labels" if cfg.labels == "coarse" else "fine_labels"
    return _cifar(cfg, "cifar-100-python", [split], label_key, CIFAR100)


# STL-10: stl10_binary/{train,test,unlabeled}_X.bin uint8 [N, 3, 96, 96] with each channel stored
# column-major; {train,test}_y.bin uint8 labels 1..10.


def _read_stl10_images(path: Path) -> torch.Tensor:
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size == 0 or raw.size % (3 * 96 * 96):
        raise ValueError(f"{path} holds {raw.size} bytes, not a whole number of 3x96x96 STL-10 images")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    return torch.from_numpy(images)


def _load_stl10(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    folder = Path(cfg.root) / "stl10_binary"
    parts = ["train", "unlabeled"] if split == "train+unlabeled" else [split]
    needed = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    if not all((folder / f).is_file() for f in needed):
        if not cfg.download:
            raise _missing(cfg, folder, f"the binary files {', '.join(needed)}")
        from torchvision.datasets import STL10

        STL10(root=cfg.root, split=parts[-1], download=True)
    images, targets = [], []
    for part in parts:
        x = _read_stl10_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            y = torch.full((x.shape[0],), -1, dtype=torch.int64)
        else:
            y = torch.from_numpy(np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"{folder / f'{part}_y.bin'} has {y.shape[0]} labels for {x.shape[0]} images")
        images.append(x)
        targets.append(y)
    if len(parts) == 1:
        return InMemoryImageDataset(images[0], targets[0])
    return InMemoryImageDataset(torch.cat(images), torch.cat(targets))


# Fashion-MNIST: IDX files, big-endian header (0, 0, 0x08 = uint8, ndim) then ndim uint32 sizes.


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path} declares shape {shape} but holds {len(body)} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find_idx_pair(folders: list[Path], prefix: str) -> tuple[Path, Path] | None:
    for folder in folders:
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _load_fashion_mnist(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    prefix = "train" if split == "train" else "t10k"
    root = Path(cfg.root)
    folders = [root, root / "FashionMNIST" / "raw", *FASHION_MNIST_SYSTEM_DIRS]
    pair = _find_idx_pair(folders, prefix)
    if pair is None:
        expected = f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
        if not cfg.download:
            raise _missing(cfg, root, f"{expected} in {', '.join(map(str, folders))}")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=cfg.root, train=split == "train", download=True)
        pair = _find_idx_pair(folders, prefix)
        if pair is None:
            raise _missing(cfg, root / "FashionMNIST" / "raw", expected)
    images, labels = (read_idx(p) for p in pair)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{pair[0]} and {pair[1]} do not match: images {images.shape}, labels {labels.shape}")
    return InMemoryImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# Folders of image files (ImageNet layout: root/<split>/<class>/<image>).


def imagenet100_classes() -> list[str]:
    """The 100 ImageNet classes of CMC (Tian et al., 2019), as used by solo-learn and most SSL papers."""
    return IMAGENET100_CLASSES_FILE.read_text().split()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_folder_root(cfg: DataConfig, split: str) -> Path:
    """imagenet*: root/<train_split|test_split>. image_folder: the same, except that a root without a
    train_split subfolder is itself the training folder."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found for dataset '{cfg.name}'")
    folder = root / (cfg.train_split if split == "train" else cfg.test_split)
    if folder.is_dir():
        return folder
    if cfg.name == "image_folder" and split == "train":
        return root
    expected = "one subfolder of images per class"
    raise FileNotFoundError(f"{folder} not found: expected {expected} for the {split} split of '{cfg.name}'")


def _files_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs.sort()
        found.extend(Path(directory) / n for n in sorted(names) if _is_image(n))
    return found


def _load_image_folder(cfg: DataConfig, split: str) -> ImageFileDataset:
    folder = _image_folder_root(cfg, split)
    classes = _class_folders(folder)
    if cfg.name == "imagenet100":
        wanted = imagenet100_classes()
        missing = [c for c in wanted if c not in classes]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {len(missing)} of the 100 imagenet100 class folders, e.g. {', '.join(missing[:3])}"
            )
        classes = wanted
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_files = _files_under(folder / name)
        files += class_files
        labels += [label] * len(class_files)
    if not classes:  # a flat folder of images: unlabelled
        files = sorted(folder / e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        labels = [-1] * len(files)
    if not files:
        raise FileNotFoundError(
            f"no images found in {folder}: expected class subfolders of images or a flat folder of "
            f"{'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return ImageFileDataset(files, torch.tensor(labels, dtype=torch.int64), classes, cfg.skip_corrupt)


# Hugging Face datasets from a local path.


def _read_hf_splits(path: Path):
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files={"train": str(path)})
    else:  # a folder of parquet files or an imagefolder; the builder and splits are inferred from the files
        loaded = datasets.load_dataset(str(path))
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def _load_hf(cfg: DataConfig, split: str) -> HFImageDataset:
    import datasets

    path = Path(cfg.root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected a saved Hugging Face dataset, parquet or image folder")
    splits = _read_hf_splits(path)
    split_name = cfg.train_split if split == "train" else cfg.test_split
    if split_name not in splits:
        key = "data.train_split" if split == "train" else "data.test_split"
        raise ValueError(f"hf dataset at {path} has no split '{split_name}' (splits: {', '.join(splits)}); set {key}")
    table = splits[split_name]
    for key, column in (("data.image_column", cfg.image_column), ("data.label_column", cfg.label_column)):
        if column and column not in table.column_names:
            raise ValueError(
                f"{key}='{column}' is not a column of the hf dataset at {path} (columns: {', '.join(table.column_names)})"
            )
    if not isinstance(table.features[cfg.image_column], datasets.Image):
        raise TypeError(
            f"data.image_column='{cfg.image_column}' of the hf dataset at {path} holds "
            f"{table.features[cfg.image_column]}, not images"
        )
    if cfg.label_column:
        targets = torch.as_tensor(table.with_format("numpy")[cfg.label_column], dtype=torch.int64)
        feature = table.features[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel):
            classes = list(feature.names)
        else:
            classes = [str(c) for c in range(int(targets.max()) + 1 if len(targets) else 0)]
    else:
        targets = torch.full((len(table),), -1, dtype=torch.int64)
        classes = []
    # Only the image column travels to the workers; it is decoded here so errors can name the file.
    table = table.select_columns([cfg.image_column]).cast_column(cfg.image_column, datasets.Image(decode=False))
    return HFImageDataset(table, cfg.image_column, targets, classes, f"{path} [{split_name}]", cfg.skip_corrupt)
