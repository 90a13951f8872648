"""Frozen features of a backbone on a dataset: the input of every evaluation protocol.

``extract_features(backbone, dataset, transform, batch_size, device)`` runs the backbone in eval mode
without gradients and returns ``(features [N, D] float32 on the CPU, labels [N] int64)``.

Fast path: an in-memory dataset (``.images`` uint8 ``[N, C, H, W]`` and ``.targets``, see
``common.data``) is sliced into whole batches that go to ``device`` as uint8 and are transformed there in
one call, instead of one transform call per image in DataLoader workers. ``transform`` must then be a
deterministic tensor transform that accepts batches (``torchvision.transforms.v2`` resize, crop, dtype
conversion and normalisation all do), which is what an evaluation transform is.

``extract_inputs_and_features`` also returns the transformed images themselves (what the backbone saw),
for estimates of the information the features keep about their input (``evaluation.mine``).
``progress=True`` shows a bar of the batches (``evaluation.progress``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from common.data import ShardedDataset
from common.data.shard_plan import EpochPlan
from common.errors import ConfigError
from evaluation.progress import progress_bar


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
def _run(backbone: nn.Module, batches, device: torch.device, keep_inputs: bool) -> tuple[Tensor, ...]:
    inputs, features, labels = [], [], []
    for images, targets in batches:
        images = images.to(device, non_blocking=True)
        output = backbone(images)
        features.append(output.float().flatten(1).cpu())
        labels.append(_as_labels(targets))
        if keep_inputs:
            inputs.append(images.float().cpu())
    if not features:
        raise ValueError("cannot extract features from an empty dataset")
    result = (torch.cat(features), torch.cat(labels))
    return (torch.cat(inputs), *result) if keep_inputs else result


def _extract(backbone: nn.Module, dataset, transform: Callable | None, batch_size: int, device, num_workers: int,
             indices: Tensor | None, progress: bool, keep_inputs: bool) -> tuple[Tensor, ...]:
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    count = len(dataset) if indices is None else len(indices)
    bar = progress_bar(total=-(-count // batch_size), desc="features", enabled=progress)
    try:
        if is_in_memory(dataset):
            images, targets = dataset.images, _as_labels(dataset.targets)
            order = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)

            def batches():
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = images[rows].to(device, non_blocking=True)
                    yield (transform(batch) if transform is not None else batch), targets[rows]
                    bar.update(1)

            return _run(backbone, batches(), device, keep_inputs)
        if isinstance(dataset, ShardedDataset):  # a stream: every sample once, in shard order
            if indices is not None:
                raise ConfigError("a subset of sharded data (eval.max_train_images, max_train_images) is not "
                                  "available: write the subset's shards with python -m common.data.make_shards")
            plan = EpochPlan(epoch=0, seed=0, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            loader = ((views[0], labels) for views, labels in dataset.epoch_loader(plan, [transform]))
            return _run(backbone, _counted(loader, bar), device, keep_inputs)
        source = TransformedDataset(dataset, transform)
        if indices is not None:
            source = torch.utils.data.Subset(source, torch.as_tensor(indices, dtype=torch.long).tolist())
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        return _run(backbone, _counted(loader, bar), device, keep_inputs)
    finally:
        bar.close()
        backbone.train(was_training)


def _counted(iterable, bar):
    """Yield from ``iterable``, advancing ``bar`` after each item."""
    for item in iterable:
        yield item
        bar.update(1)


def extract_features(backbone: nn.Module, dataset, transform: Callable | None, batch_size: int = 256,
                     device: torch.device | str = "cpu", num_workers: int = 0,
                     indices: Tensor | None = None, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Features and labels of the images of ``dataset`` at ``indices`` (all, in order, by default).

    The backbone is put in eval mode for the extraction and its previous mode restored afterwards.
    ``progress`` shows a bar of the batches (``evaluation.progress``).
    """
    return _extract(backbone, dataset, transform, batch_size, device, num_workers, indices, progress, False)


def extract_inputs_and_features(backbone: nn.Module, dataset, transform: Callable | None, batch_size: int = 256,
                                device: torch.device | str = "cpu", num_workers: int = 0,
                                indices: Tensor | None = None,
                                progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs [N, C, H, W] float32, features, labels)``: ``extract_features`` that also keeps the
    transformed images the backbone saw (on the CPU), for estimates of I(input; feature) such as MINE."""
    return _extract(backbone, dataset, transform, batch_size, device, num_workers, indices, progress, True)
