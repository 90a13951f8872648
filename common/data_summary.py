"""What a run trains on, stated before its first step: ``data_summary`` returns it as a dict (the trainer prints
``summary_lines`` and writes ``<output_dir>/data.json``).

A derived training set says how it was derived and how many images each class kept: a long-tailed split
(CIFAR-10-LT at imbalance 100 keeps 12,406 of 50,000 images), coarse labels, an ImageNet hierarchy, a
stratified subset. The evaluation split is counted too, where it exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from common.augment import AugmentConfig
from common.data import DataConfig, DatasetInfo, build_dataset
from common.errors import InputError


def derivations(cfg: DataConfig) -> list[str]:
    """How the training set differs from the data set's own split, in words (empty: it does not)."""
    derived = []
    if cfg.name.endswith("_lt"):
        derived.append(f"long tail: imbalance ratio {cfg.imbalance_ratio:g}, {cfg.imbalance_profile} profile, "
                       f"seed {cfg.imbalance_seed}")
    if cfg.name == "imagenet_hierarchy":
        derived.append(f"ImageNet hierarchy {cfg.hierarchy}")
    if cfg.labels == "coarse":
        derived.append("coarse labels (superclasses)")
    if cfg.subset is not None:
        derived.append(f"stratified subset of the first {cfg.subset} images")
    return derived


def class_counts(dataset: Dataset, num_classes: int) -> list[int] | None:
    """Images per class (unlabelled ones, -1, left out), where the data set holds its labels."""
    targets = getattr(dataset, "targets", None)
    if targets is None or not num_classes:
        return None
    targets = torch.as_tensor(targets)
    return torch.bincount(targets[targets >= 0], minlength=num_classes).tolist()


def data_summary(cfg: DataConfig, train_split: str, train: Dataset, info: DatasetInfo, augment: AugmentConfig,
                 in_chans: int) -> dict[str, Any]:
    """The training data of a run: data set, root, images per split, classes, per-class counts, image size and
    channels, normalisation statistics, and the views the augmentation makes of each image."""
    images = {train_split: len(train)}
    if train_split != "test":
        try:
            images["test"] = len(build_dataset(cfg, "test"))
        except InputError as error:  # the run does not need it: say why it is not counted
            images["test"] = f"not counted: {str(error).splitlines()[0]}"
    views = {"global": augment.num_views, "global_size": augment.image_size or info.image_size}
    if augment.name == "multiview" and augment.local_crops:
        views.update(local=augment.local_crops, local_size=augment.local_size)
    return {
        "dataset": cfg.name,
        "root": str(Path(cfg.root).resolve()) if "://" not in cfg.root else cfg.root,
        "train_split": train_split,
        "images": images,
        "classes": info.num_classes,
        "labels": cfg.labels,
        "derived": derivations(cfg),
        "per_class_train_images": class_counts(train, info.num_classes),
        "image_size": info.image_size,
        "channels": info.channels,
        "input_channels": in_chans,
        "mean": list(info.mean),
        "std": list(info.std),
        "augment": augment.name,
        "views": views,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for a run's log, a few lines."""
    images = ", ".join(f"{split} {count:,}" if isinstance(count, int) else f"{split} {count}"
                       for split, count in summary["images"].items())
    lines = [(f"data: {summary['dataset']} at {summary['root']} ({images} images; {summary['classes']} classes, "
             f"{summary['labels']} labels)")]
    if summary["derived"]:
        lines.append(f"  derived: {'; '.join(summary['derived'])}")
    counts = summary["per_class_train_images"]
    if counts and summary["derived"]:
        shown = ", ".join(map(str, counts)) if len(counts) <= 20 else f"{max(counts)} .. {min(counts)}"
        lines.append(f"  per class ({summary['train_split']}): {shown}")
    views = summary["views"]
    local = f" + {views['local']} x {views['local_size']} px" if "local" in views else ""
    lines.append(f"  images {summary['image_size']} px, {summary['channels']} channel(s) (input "
                 f"{summary['input_channels']}), mean {_rounded(summary['mean'])}, std {_rounded(summary['std'])}; "
                 f"views per image ({summary['augment']}): {views['global']} x {views['global_size']} px{local}")
    return lines


def _rounded(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
