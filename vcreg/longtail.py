"""Long-tailed CIFAR (Appendix C.3): class c keeps ``n_max * ratio^(-c / (K - 1))`` training images.

With imbalance ratio 100 this is CIFAR-10-LT (5000 down to 50 images per class) and CIFAR-100-LT (500 down
to 5), the exponential profile of Cao et al. (2019); each class keeps its first images in file order and
the test sets stay balanced.
"""

from __future__ import annotations

import torch


def longtail_counts(images_per_class: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Images kept per class, from the head class 0 to the tail class K - 1 (exponential profile)."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if num_classes < 2:
        raise ValueError(f"a long-tailed split needs at least 2 classes, got {num_classes}")
    return [int(images_per_class * imbalance_ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def longtail_indices(targets: torch.Tensor, imbalance_ratio: float) -> torch.Tensor:
    """Sorted indices of the long-tailed subset of a balanced training set with labels ``targets``."""
    targets = torch.as_tensor(targets)
    classes = torch.unique(targets)
    per_class = [torch.nonzero(targets == c).flatten() for c in classes]
    smallest = min(len(i) for i in per_class)
    counts = longtail_counts(smallest, len(classes), imbalance_ratio)
    return torch.sort(torch.cat([i[:n] for i, n in zip(per_class, counts)])).values
