"""Neural collapse of frozen features (VCReg Section 5.2, Table 6; eqs. 8 and 9).

- CDNV (eq. 8): ``V(S_i, S_j) = (Var(S_i) + Var(S_j)) / (2 ||mu_i - mu_j||^2)`` with ``Var(S)`` the mean
  squared distance of a class's features to their mean, averaged over all pairs of classes. Small values
  mean collapsed classes.
- NCC (eq. 9): accuracy of ``argmin_c ||f(x) - mu_c||`` with class centres from the training features.

``collapse_metrics`` gives both for the train and test features of a run (the trainer's final evaluation
of a VCReg run and ``vcreg.analysis.collapse`` call it); on the command line, for any labelled data set:

    python -m evaluation neural_collapse --checkpoint RUN data.name=cifar100 data.root=/data
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.config_types import NonNegativeInt, PositiveInt
from common.data import DataConfig
from common.errors import DataError
from evaluation.cli import labelled_features, run_protocol


def class_means(features: Tensor, labels: Tensor, num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-class means ``[K, D]`` and the classes present (sorted)."""
    classes = torch.unique(labels) if num_classes is None else torch.arange(num_classes)
    means = torch.stack([features[labels == c].mean(0) for c in classes])
    return means, classes


def cdnv(features: Tensor, labels: Tensor) -> float:
    """Eq. 8 averaged over all pairs of distinct classes present in ``labels``."""
    features = features.double()
    means, classes = class_means(features, labels)
    if len(classes) < 2:
        raise DataError(f"CDNV needs at least 2 classes, got {len(classes)}")
    variances = torch.stack([(features[labels == c] - m).pow(2).sum(1).mean() for c, m in zip(classes, means)])
    distances = torch.cdist(means, means).pow(2)
    i, j = torch.triu_indices(len(classes), len(classes), offset=1)
    return float(((variances[i] + variances[j]) / (2 * distances[i, j])).mean())


def ncc_accuracy(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor) -> float:
    """Eq. 9: the fraction of ``features`` whose nearest training class centre is their class."""
    means, classes = class_means(train_features.double(), train_labels)
    predicted = classes[torch.cdist(features.double(), means).argmin(1)]
    return float((predicted == labels).double().mean())


def collapse_metrics(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> dict[str, float]:
    """CDNV and NCC accuracy on the training features (where collapse is defined), NCC also on the test set."""
    (train_x, train_y), (test_x, test_y) = train, test
    return {"cdnv": cdnv(train_x, train_y), "ncc_top1": ncc_accuracy(train_x, train_y, train_x, train_y),
            "ncc_top1_test": ncc_accuracy(train_x, train_y, test_x, test_y)}


@dataclass
class NeuralCollapseConfig:
    """``python -m evaluation neural_collapse``: CDNV and NCC accuracy of a frozen backbone's features."""

    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int | None = None       # evaluation resolution; None: the dataset's native size
    max_train_images: int | None = None  # this many training images (stratified); None: all
    batch_size: PositiveInt = 256       # feature extraction batch
    num_workers: NonNegativeInt = 4  # DataLoader worker processes (0: load in this process)
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True           # tqdm bar for the extraction (like the trainer's)


def evaluate_neural_collapse(cfg: NeuralCollapseConfig) -> dict[str, float]:
    train_x, train_y, test_x, test_y = labelled_features(cfg)
    return collapse_metrics((train_x, train_y), (test_x, test_y))


def main(argv: list[str] | None = None) -> int:
    return run_protocol(NeuralCollapseConfig, evaluate_neural_collapse, argv, protocol="neural_collapse")


if __name__ == "__main__":
    sys.exit(main())
