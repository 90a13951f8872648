"""Frozen features of a backbone on a dataset: the input of every evaluation protocol.

``extract_features(backbone, dataset, transform, batch_size, device)`` runs the backbone in eval mode
without gradients and returns ``(features [N, D] float32 on the CPU, labels [N] int64)``.

Fast path: an in-memory dataset (``.images`` uint8 ``[N, C, H, W]`` and ``.targets``, see
``common.data``) is sliced into whole batches that go to ``device`` as uint8 and are transformed there in
one call, instead of one transform call per image in DataLoader workers. ``transform`` must then be a
deterministic tensor transform that accepts batches (``torchvision.transforms.v2`` resize, crop, dtype
conversion and normalisation all do), which is what an evaluation transform is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


class TransformedDataset(Dataset):
    """``(transform(image), label)`` for each ``(image, label)`` of ``dataset``."""

    def __init__(self, dataset: Dataset, transform: Callable | None):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return (self.transform(image) if self.transform is not None else image), label


def is_in_memory(dataset) -> bool:
    images = getattr(dataset, "images", None)
    return (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.ndim == 4
            and getattr(dataset, "targets", None) is not None)


def _as_labels(targets) -> Tensor:
    return torch.as_tensor(targets, dtype=torch.long)


@torch.no_grad()
def _run(backbone: nn.Module, batches, device: torch.device) -> tuple[Tensor, Tensor]:
    features, labels = [], []
    for images, targets in batches:
        output = backbone(images.to(device, non_blocking=True))
        features.append(output.float().flatten(1).cpu())
        labels.append(_as_labels(targets))
    if not features:
        raise ValueError("cannot extract features from an empty dataset")
    return torch.cat(features), torch.cat(labels)


def extract_features(backbone: nn.Module, dataset, transform: Callable | None, batch_size: int = 256,
                     device: torch.device | str = "cpu", num_workers: int = 0,
                     indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Features and labels of the images of ``dataset`` at ``indices`` (all, in order, by default).

    The backbone is put in eval mode for the extraction and its previous mode restored afterwards.
    """
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    try:
        if is_in_memory(dataset):
            images, targets = dataset.images, _as_labels(dataset.targets)
            order = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)

            def batches():
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = images[rows].to(device, non_blocking=True)
                    yield (transform(batch) if transform is not None else batch), targets[rows]

            return _run(backbone, batches(), device)
        source = TransformedDataset(dataset, transform)
        if indices is not None:
            source = torch.utils.data.Subset(source, torch.as_tensor(indices, dtype=torch.long).tolist())
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        return _run(backbone, loader, device)
    finally:
        backbone.train(was_training)
