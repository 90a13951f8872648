"""Scores of predicted class labels: top-1 accuracy and mean per-class accuracy.

Mean per-class accuracy is the metric Kornblith et al. (2019, "Do Better ImageNet Models Transfer
Better?", the appendix describing the data sets) and SimCLR (Chen et al. 2020, "A Simple Framework for
Contrastive Learning of Visual Representations", its transfer-learning appendix) report for FGVC Aircraft,
Oxford-IIIT Pets, Caltech-101 and Oxford 102 Flowers: the accuracy within each class, averaged over the classes
present in the labels with equal weight,

    (1 / |C|) sum_{c in C} |{i : y_i = c and prediction_i = c}| / |{i : y_i = c}|.

It equals top-1 accuracy when every class has the same number of test images, and differs from it when the
classes are imbalanced (Flowers-102's test split has 20 to 238 images per class).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TOP1 = "top1"
MEAN_PER_CLASS = "mean_per_class_accuracy"


def _check(predictions: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    predictions, labels = torch.as_tensor(predictions).cpu().long(), torch.as_tensor(labels).cpu().long()
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions and labels must both have shape [N]; got {tuple(predictions.shape)} "
                         f"and {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("cannot score an empty set of predictions")
    return predictions, labels


def top1_accuracy(predictions: Tensor, labels: Tensor) -> float:
    """The fraction of predictions equal to their label."""
    predictions, labels = _check(predictions, labels)
    return (predictions == labels).double().mean().item()


def mean_per_class_accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Accuracy within each class present in ``labels``, averaged over those classes (module docstring)."""
    predictions, labels = _check(predictions, labels)
    classes, class_of = torch.unique(labels, return_inverse=True)
    count = torch.bincount(class_of, minlength=len(classes)).double()
    correct = torch.bincount(class_of, weights=(predictions == labels).double(), minlength=len(classes))
    return (correct / count).mean().item()


METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    TOP1: top1_accuracy,
    MEAN_PER_CLASS: mean_per_class_accuracy,
}
