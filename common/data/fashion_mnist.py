"""Fashion-MNIST: IDX files (gzipped or not), a big-endian header (0, 0, 0x08 = uint8, ndim) then ndim uint32
sizes, looked for in data.root, torchvision's layout and Debian's `dataset-fashion-mnist` folder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from common.data.config import DataConfig, DatasetInfo, download, missing_files
from common.data.datasets import InMemoryImageDataset
from common.errors import DataError

# Debian's `dataset-fashion-mnist` package installs the four IDX .gz files here.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_INFO = DatasetInfo(1, 28, 10, (0.2860,), (0.3530,))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path} declares shape {shape} but holds {len(body)} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find_idx_pair(folders: list[Path], prefix: str) -> tuple[Path, Path] | None:
    for folder in folders:
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def load_fashion_mnist(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    prefix = "train" if split == "train" else "t10k"
    root = Path(cfg.root)
    folders = [root, root / "FashionMNIST" / "raw", *FASHION_MNIST_SYSTEM_DIRS]
    pair = _find_idx_pair(folders, prefix)
    if pair is None:
        expected = f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
        if not cfg.download:
            raise missing_files(cfg, root, f"{expected} in {', '.join(map(str, folders))}")
        from torchvision.datasets import FashionMNIST

        raw = root / "FashionMNIST" / "raw"
        download(cfg, lambda: FashionMNIST(root=cfg.root, train=split == "train", download=True), raw, expected)
        pair = _find_idx_pair(folders, prefix)
        if pair is None:
            raise missing_files(cfg, raw, expected)
    images, labels = (read_idx(p) for p in pair)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DataError(f"{pair[0]} and {pair[1]} do not match: images {images.shape}, labels {labels.shape}")
    return InMemoryImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


