"""Where the training batches come from: a deterministic, resumable stream of (views, labels).

The data order of epoch ``e`` is a permutation seeded by ``(seed, e)``; every rank takes its own slice
of each global batch, so the union over ranks is the same global batch for any number of processes.
Augmentation randomness is seeded by position, never by how many batches were drawn before, so a run
resumed at step ``s`` sees exactly the batches an uninterrupted run sees from step ``s`` on.

Three input pipelines. ``augment.on=loader``: loader workers run the per-image pipelines of
``common/augment.py``. ``augment.on=device`` with an in-memory data set: whole uint8 images go to the device,
which crops and augments them (``BatchAugment``). ``augment.on=device`` with image files (folders, Hugging Face,
any data set yielding PIL images or uint8 tensors): loader workers only decode and crop each view to its output
size (or, with ``augment.decode=gpu``, read the JPEG bytes, which the device decodes and crops:
``common/decode.py``), and the device does the rest (``BatchAugment.augment_crops``). Crop boxes are seeded by
``(seed, epoch, index)``, the device's per-sample parameters by ``(seed, epoch, step, micro-batch)`` and drawn for
the whole global batch, so both are independent of the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from common.augment import AugmentConfig, build_crop_transforms, build_view_transforms, check_augment_config
from common.batch_augment import BatchAugment
from common.data import DatasetInfo, MultiViewDataset, ShardedDataset
from common.data.shard_plan import EpochPlan
from common.decode import EncodedCrops, crop_views, decode_and_crop
from common.errors import ConfigError
from common.seeds import DATA_ORDER, derive_seed


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, DATA_ORDER))
    return torch.randperm(num_samples, generator=generator)


def check_gpu_decoding(in_memory: bool, device: torch.device) -> None:
    """``augment.decode=gpu`` needs image files and a CUDA device: ``ConfigError`` otherwise."""
    if in_memory or device.type != "cuda":
        where = "the images are in memory already" if in_memory else f"this run's device is {device.type}"
        raise ConfigError(f"augment.decode=gpu decodes JPEG files with nvJPEG on a CUDA device, but {where}: "
                          "use augment.decode=cpu")


class BatchStream:
    """Per-rank micro-batches: ``global_batch / (world * accumulation)`` samples each (a whole number:
    ``common.train_config.check_train_config`` refuses a batch size that does not divide).

    ``steps_per_epoch`` counts optimiser steps (global batches); each yields ``accumulation``
    micro-batches on every rank. The last incomplete global batch of an epoch is dropped.
    """

    def __init__(self, dataset: Dataset, augment: AugmentConfig, info: DatasetInfo, out_channels: int,
                 global_batch: int, accumulation: int, rank: int, world: int, seed: int, device: torch.device,
                 num_workers: int = 0):
        self.dataset = dataset
        self.micro_batch = global_batch // (world * accumulation)
        self.global_batch, self.accumulation = global_batch, accumulation
        self.rank, self.world, self.seed, self.device = rank, world, seed, device
        self.num_workers = num_workers
        self.generator = torch.Generator(device=device)
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(dataset)} images, fewer than one batch of {global_batch}")
        check_augment_config(augment)
        self.in_memory = hasattr(dataset, "images")
        self.decode_on_device = augment.decode == "gpu"
        if self.decode_on_device:
            check_gpu_decoding(self.in_memory, device)
        self.batch_augment = BatchAugment(augment, info, out_channels) if augment.on == "device" else None
        self.views: Dataset | None = None  # what the loader workers return, per sample
        self.shard_transforms: list | None = None  # sharded data: the transforms its stream applies per sample
        if isinstance(dataset, ShardedDataset):
            if self.decode_on_device:
                raise ConfigError("augment.decode=gpu reads JPEG files of image folders and Hugging Face data sets; "
                                  "for data.name=webdataset use augment.decode=cpu")
            if augment.on == "loader":
                self.shard_transforms = build_view_transforms(augment, info, out_channels)
            else:
                to_uint8, crops = build_crop_transforms(augment, info, out_channels)
                self.channels = self.batch_augment.channels
                self.shard_transforms = [v2.Compose([to_uint8, crop]) for crop in crops]
        elif augment.on == "loader":
            self.views = MultiViewDataset(dataset, build_view_transforms(augment, info, out_channels), seed)
        elif not self.in_memory:
            to_uint8, crops = build_crop_transforms(augment, info, out_channels)
            self.channels = self.batch_augment.channels
            if self.decode_on_device:
                self.views = EncodedCrops(dataset, to_uint8, crops, seed)
            else:
                self.views = crop_views(dataset, to_uint8, crops, seed)

    def _micro_indices(self, order: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        start = step * self.global_batch + (micro * self.world + self.rank) * self.micro_batch
        return order[start:start + self.micro_batch]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[list[torch.Tensor]],
                                                                       list[torch.Tensor]]]:
        """Yield ``(step_in_epoch, [views per micro-batch], [labels per micro-batch])`` from ``start_step``."""
        if self.shard_transforms is not None:
            yield from self._shard_epoch(epoch, start_step)
            return
        order = epoch_order(len(self.dataset), self.seed, epoch)
        if self.views is None:
            yield from self._device_epoch(order, epoch, start_step)
        else:
            yield from self._loader_epoch(order, epoch, start_step)

    def _generator(self, epoch: int, step: int, micro: int) -> torch.Generator:
        return self.generator.manual_seed(derive_seed(self.seed, epoch, step, micro))

    def _device_epoch(self, order, epoch, start_step):
        images, targets = self.dataset.images, self.dataset.targets
        for step in range(start_step, self.steps_per_epoch):
            all_views, all_labels = [], []
            for micro in range(self.accumulation):
                index = self._micro_indices(order, step, micro)
                batch = images[index].to(self.device, non_blocking=True)
                all_views.append(self.batch_augment(batch, self._generator(epoch, step, micro), self.rank, self.world))
                all_labels.append(targets[index].to(self.device, non_blocking=True))
            yield step, all_views, all_labels

    def _device_views(self, loaded, epoch: int, step: int, micro: int) -> list[torch.Tensor]:
        """The views of one loaded micro-batch, on the device."""
        if self.batch_augment is None:
            return [v.to(self.device, non_blocking=True) for v in loaded]
        if self.decode_on_device:
            crops = decode_and_crop(loaded, self.views, self.channels, self.device)
        else:
            crops = [v.to(self.device, non_blocking=True) for v in loaded]
        return self.batch_augment.augment_crops(crops, self._generator(epoch, step, micro), self.rank, self.world)

    def _loader_epoch(self, order, epoch, start_step):
        self.views.set_epoch(epoch)
        batches = [self._micro_indices(order, step, micro).tolist()
                   for step in range(start_step, self.steps_per_epoch) for micro in range(self.accumulation)]
        collate = EncodedCrops.collate if self.decode_on_device else None
        loader = DataLoader(self.views, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        yield from self._loaded_steps(iter(loader), epoch, start_step)

    def _shard_epoch(self, epoch, start_step):
        """Sharded data: each rank reads its own run of the epoch's shuffled samples (``common.data.shard_plan``),
        so a resumed run continues at the right sample with the same ``data.num_workers``; unlike the other data,
        the global batch of a step then depends on the number of processes."""
        plan = EpochPlan(epoch=epoch, seed=self.seed, batch_size=self.micro_batch, rank=self.rank, world=self.world,
                         num_batches=self.steps_per_epoch * self.accumulation,
                         start_batch=start_step * self.accumulation, num_workers=self.num_workers)
        loader = self.dataset.epoch_loader(plan, self.shard_transforms, pin_memory=self.device.type == "cuda")
        yield from self._loaded_steps(iter(loader), epoch, start_step)

    def _loaded_steps(self, iterator, epoch, start_step):
        for step in range(start_step, self.steps_per_epoch):
            all_views, all_labels = [], []
            for micro in range(self.accumulation):
                loaded, labels = next(iterator)
                all_views.append(self._device_views(loaded, epoch, step, micro))
                all_labels.append(torch.as_tensor(labels).to(self.device, non_blocking=True))
            yield step, all_views, all_labels
