"""CIFAR-10 and CIFAR-100: python pickles of {'data': uint8 [N, 3072] (R, G, B planes, row-major),
'labels' | 'fine_labels' | 'coarse_labels': [N]}, in the folders torchvision downloads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from common.data.config import DataConfig, DatasetInfo, download, missing_files
from common.data.datasets import InMemoryImageDataset
from common.errors import DataError

# Per-channel statistics of the training images in [0, 1].
CIFAR10_INFO = DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_INFO = DatasetInfo(3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path} is not a CIFAR python pickle: {error}") from error


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_cifar_pickle(path)
    for key in ("data", label_key):
        if key not in entry:
            raise DataError(f"{path} has no '{key}' entry (keys: {', '.join(map(str, entry))})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32), np.asarray(entry[label_key], dtype=np.int64)


def _cifar(cfg: DataConfig, folder_name: str, files: list[str], label_key: str, downloader) -> InMemoryImageDataset:
    folder = Path(cfg.root) / folder_name
    if not all((folder / f).is_file() for f in files):
        expected = f"the python-pickle files {', '.join(files)}"
        if not cfg.download:
            raise missing_files(cfg, folder, expected)
        download(cfg, lambda: downloader(root=cfg.root, download=True), folder, expected)
    parts = [_cifar_arrays(folder / f, label_key) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    targets = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return InMemoryImageDataset(images, targets)


def load_cifar10(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    from torchvision.datasets import CIFAR10

    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _cifar(cfg, "cifar-10-batches-py", files, "labels", CIFAR10)


def load_cifar100(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    from torchvision.datasets import CIFAR100

    label_key = "coarse_labels" if cfg.labels == "coarse" else "fine_labels"
    return _cifar(cfg, "cifar-100-python", [split], label_key, CIFAR100)

