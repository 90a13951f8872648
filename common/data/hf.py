"""Hugging Face datasets from a local path: a `save_to_disk` folder, a parquet file or folder, or an imagefolder."""

from __future__ import annotations

from pathlib import Path

import torch

from common.data.config import DataConfig
from common.data.datasets import HFImageDataset
from common.errors import ConfigError, DataError


def _read_hf_splits(path: Path):
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files={"train": str(path)})
    else:  # a folder of parquet files or an imagefolder; the builder and splits are inferred from the files
        loaded = datasets.load_dataset(str(path))
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def load_hf(cfg: DataConfig, split: str) -> HFImageDataset:
    import datasets

    path = Path(cfg.root)
    if not path.exists():
        raise DataError(f"{path} not found: expected a saved Hugging Face dataset, parquet or image folder")
    splits = _read_hf_splits(path)
    split_name = cfg.train_split if split == "train" else cfg.test_split
    if split_name not in splits:
        key = "data.train_split" if split == "train" else "data.test_split"
        raise ConfigError(f"hf dataset at {path} has no split '{split_name}' (splits: {', '.join(splits)}); set {key}")
    table = splits[split_name]
    for key, column in (("data.image_column", cfg.image_column), ("data.label_column", cfg.label_column)):
        if column and column not in table.column_names:
            raise ConfigError(
                f"{key}='{column}' is not a column of the hf dataset at {path} (columns: {', '.join(table.column_names)})"
            )
    if not isinstance(table.features[cfg.image_column], datasets.Image):
        raise ConfigError(
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
