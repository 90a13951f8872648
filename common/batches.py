"""Where the training batches come from: a deterministic, resumable stream of (views, labels).

The data order of epoch ``e`` is a permutation seeded by ``(seed, e)``; every rank takes its own slice
of each global batch, so the union over ranks is the same global batch for any number of processes.
Augmentation randomness is seeded by position, never by how many batches were drawn before, so a run
resumed at step ``s`` sees exactly the batches an uninterrupted run sees from step ``s`` on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from common.augment import AugmentConfig, build_view_transforms
from common.batch_augment import BatchAugment
from common.data import DatasetInfo, MultiViewDataset

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value and on their order."""
    seed = 0
    for value in values:
        seed = ((seed ^ (int(value) & _MASK)) * _MIX + 0x632BE59BD9B4E019) & _MASK
        seed ^= seed >> 29
    return seed


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0xDA7A))
    return torch.randperm(num_samples, generator=generator)


class BatchStream:
    """Per-rank micro-batches: ``global_batch / (world * accumulation)`` samples each.

    ``steps_per_epoch`` counts optimiser steps (global batches); each yields ``accumulation``
    micro-batches on every rank. The last incomplete global batch of an epoch is dropped.
    """

    def __init__(self, dataset: Dataset, augment: AugmentConfig, info: DatasetInfo, out_channels: int,
                 global_batch: int, accumulation: int, rank: int, world: int, seed: int, device: torch.device,
                 num_workers: int = 0):
        per_step = world * accumulation
        if global_batch % per_step:
            raise ValueError(f"batch_size {global_batch} is not divisible by processes x grad_accum_steps "
                             f"= {per_step}")
        self.dataset, self.augment_cfg, self.info = dataset, augment, info
        self.micro_batch = global_batch // per_step
        self.global_batch, self.accumulation = global_batch, accumulation
        self.rank, self.world, self.seed, self.device = rank, world, seed, device
        self.num_workers = num_workers
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of {global_batch}")
        self.on_device = augment.on == "device"
        if augment.on not in ("device", "loader"):
            raise ValueError(f"augment.on must be device or loader, not '{augment.on}'")
        if self.on_device:
            if not hasattr(dataset, "images"):
                raise ValueError("augment.on=device needs an in-memory dataset (cifar10, cifar100, stl10, "
                                 "fashion_mnist); use augment.on=loader for image folders")
            self.batch_augment = BatchAugment(augment, info, out_channels)
        else:
            self.transforms = build_view_transforms(augment, info, out_channels)

    def _micro_indices(self, order: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        start = step * self.global_batch + (micro * self.world + self.rank) * self.micro_batch
        return order[start:start + self.micro_batch]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[list[torch.Tensor]],
                                                                       list[torch.Tensor]]]:
        """Yield ``(step_in_epoch, [views per micro-batch], [labels per micro-batch])`` from ``start_step``."""
        order = epoch_order(len(self.dataset), self.seed, epoch)
        if self.on_device:
            yield from self._device_epoch(order, epoch, start_step)
        else:
            yield from self._loader_epoch(order, epoch, start_step)

    def _device_epoch(self, order, epoch, start_step):
        images, targets = self.dataset.images, self.dataset.targets
        generator = torch.Generator(device=self.device)
        for step in range(start_step, self.steps_per_epoch):
            all_views, all_labels = [], []
            for micro in range(self.accumulation):
                index = self._micro_indices(order, step, micro)
                generator.manual_seed(derive_seed(self.seed, epoch, step, micro))
                batch = images[index].to(self.device, non_blocking=True)
                all_views.append(self.batch_augment(batch, generator, self.rank, self.world))
                all_labels.append(targets[index].to(self.device, non_blocking=True))
            yield step, all_views, all_labels

    def _loader_epoch(self, order, epoch, start_step):
        dataset = MultiViewDataset(self.dataset, self.transforms, self.seed)
        dataset.set_epoch(epoch)
        batches = [self._micro_indices(order, step, micro).tolist()
                   for step in range(start_step, self.steps_per_epoch) for micro in range(self.accumulation)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        iterator = iter(loader)
        for step in range(start_step, self.steps_per_epoch):
            all_views, all_labels = [], []
            for _ in range(self.accumulation):
                views, labels = next(iterator)
                all_views.append([v.to(self.device, non_blocking=True) for v in views])
                all_labels.append(torch.as_tensor(labels).to(self.device, non_blocking=True))
            yield step, all_views, all_labels
