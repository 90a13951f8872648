"""STL-10: stl10_binary/{train,test,unlabeled}_X.bin uint8 [N, 3, 96, 96] with each channel stored
column-major; {train,test}_y.bin uint8 labels 1..10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.data.config import DataConfig, DatasetInfo, download, missing_files
from common.data.datasets import InMemoryImageDataset
from common.errors import DataError

STL10_INFO = DatasetInfo(3, 96, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))


def _read_stl10_images(path: Path) -> torch.Tensor:
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size == 0 or raw.size % (3 * 96 * 96):
        raise DataError(f"{path} holds {raw.size} bytes, not a whole number of 3x96x96 STL-10 images")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    return torch.from_numpy(images)


def load_stl10(cfg: DataConfig, split: str) -> InMemoryImageDataset:
    folder = Path(cfg.root) / "stl10_binary"
    parts = ["train", "unlabeled"] if split == "train+unlabeled" else [split]
    needed = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    if not all((folder / f).is_file() for f in needed):
        expected = f"the binary files {', '.join(needed)}"
        if not cfg.download:
            raise missing_files(cfg, folder, expected)
        from torchvision.datasets import STL10

        download(cfg, lambda: STL10(root=cfg.root, split=parts[-1], download=True), folder, expected)
    images, targets = [], []
    for part in parts:
        x = _read_stl10_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            y = torch.full((x.shape[0],), -1, dtype=torch.int64)
        else:
            y = torch.from_numpy(np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1)
            if y.shape[0] != x.shape[0]:
                raise DataError(f"{folder / f'{part}_y.bin'} has {y.shape[0]} labels for {x.shape[0]} images")
        images.append(x)
        targets.append(y)
    if len(parts) == 1:
        return InMemoryImageDataset(images[0], targets[0])
    return InMemoryImageDataset(torch.cat(images), torch.cat(targets))
