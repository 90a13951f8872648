"""Folders of image files: ImageNet's layout root/<split>/<class>/<image>, ImageNet-100's class list, and any
folder of class subfolders (or a flat folder of unlabelled images)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from common.data.config import DataConfig
from common.data.datasets import ImageFileDataset
from common.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
IMAGENET100_CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")


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
        raise DataError(f"data folder {root} not found for dataset '{cfg.name}'")
    folder = root / (cfg.train_split if split == "train" else cfg.test_split)
    if folder.is_dir():
        return folder
    if cfg.name == "image_folder" and split == "train":
        return root
    expected = "one subfolder of images per class"
    raise DataError(f"{folder} not found: expected {expected} for the {split} split of '{cfg.name}'")


def _files_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs.sort()
        found.extend(Path(directory) / n for n in sorted(names) if _is_image(n))
    return found


def load_image_folder(cfg: DataConfig, split: str, classes: list[str] | None = None) -> ImageFileDataset:
    """The split's images labelled by class folder: every folder in name order, or only the folders
    ``classes`` (imagenet100: its 100), labelled by their position in that list."""
    folder = _image_folder_root(cfg, split)
    found = _class_folders(folder)
    if classes is None and cfg.name == "imagenet100":
        classes = imagenet100_classes()
    if classes is not None:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"{folder} lacks {len(missing)} of the {len(classes)} {cfg.name} class folders, "
                            f"e.g. {', '.join(missing[:3])}")
    else:
        classes = found
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
        raise DataError(
            f"no images found in {folder}: expected class subfolders of images or a flat folder of "
            f"{'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return ImageFileDataset(files, torch.tensor(labels, dtype=torch.int64), classes, cfg.skip_corrupt)
