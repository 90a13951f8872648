"""Semi-supervised fine-tuning on a labelled fraction of the training set (MSBReg supplement 2.2).

Protocol (after BYOL, Grill et al. 2020): a linear classifier on the backbone, trained with cross-entropy
on 1% or 10% of the ImageNet training images, SGD with Nesterov momentum 0.9, batch 1024, separate
learning rates for the classifier and the encoder, cosine decay:
    1%:  classifier 2.0,  encoder frozen (lr 0)
    10%: classifier 0.25, encoder 2.5e-4
``classifier_lr`` / ``encoder_lr`` left at None take these values from ``percent``. The supplement gives
no epoch count; ``epochs`` defaults to 30. Training images get a random resized crop and a flip; the
test split is evaluated with the deterministic evaluation transform.

Subsets: ImageNet uses SimCLR's published lists of image file names (``evaluation.splits``: downloaded
and cached on first use, ``subset_file`` overrides); any other dataset, or ``split=stratified``, uses a
random stratified fraction ``percent / 100`` of every class (seeded by ``seed``).

Runs on one device (``device``); ``batch_size`` is the batch of that device.

Command line: ``python -m evaluation.semi_supervised --checkpoint PATH data.name=imagenet
data.root=/data/imagenet percent=1``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from common.augment import AugmentConfig, build_eval_transform, build_supervised_transform
from common.config_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval
from common.data import DataConfig, build_dataset, dataset_info
from common.errors import ConfigError, DataError
from common.schedules import warmup_cosine
from evaluation.cli import load_eval_backbone, resolve_device, run_protocol
from evaluation.features import TransformedDataset, extract_features
from evaluation.labelled import check_classes
from evaluation.linear import classifier_accuracy, train_on_images
from evaluation.splits import (
    indices_of_names,
    read_subset_file,
    sample_paths,
    simclr_subset_file,
    stratified_fraction,
)

PAPER_LEARNING_RATES = {1.0: (2.0, 0.0), 10.0: (0.25, 2.5e-4)}  # percent: (classifier, encoder)


@dataclass
class SemiSupervisedConfig:
    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="imagenet"))
    percent: PositiveFloat = 1.0         # labelled share of the training set, in percent
    split: Literal["auto", "simclr", "stratified"] = "auto"                  # auto (simclr for imagenet or with subset_file) | simclr | stratified
    subset_file: str | None = None    # a SimCLR-style list of image names; default: downloaded and cached
    epochs: PositiveInt = 30  # passes over the labelled images (the supplement gives none; not from the paper)
    batch_size: PositiveInt = 1024  # fine-tuning and extraction batch (BYOL: 1024)
    classifier_lr: NonNegativeFloat | None = None  # None: 2.0 for 1%, 0.25 for 10%
    encoder_lr: NonNegativeFloat | None = None     # None: 0 (frozen) for 1%, 2.5e-4 for 10%
    momentum: UnitInterval = 0.9  # SGD momentum (BYOL: 0.9)
    nesterov: bool = True  # Nesterov momentum (BYOL)
    weight_decay: NonNegativeFloat = 0.0  # L2 penalty (BYOL: none)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(name="supervised"))
    image_size: int | None = None     # test resolution; None: the dataset's native size (224 for folders)
    num_workers: NonNegativeInt = 8  # DataLoader worker processes (0: load in this process)
    seed: int = 0  # the stratified subset, the data order and the augmentation
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True            # tqdm bars for the fine-tuning and the extraction (like the trainer's)


def learning_rates(cfg: SemiSupervisedConfig) -> tuple[float, float]:
    """(classifier, encoder) learning rates: the configured ones, else the paper's for 1% / 10%."""
    paper = PAPER_LEARNING_RATES.get(float(cfg.percent))
    if (cfg.classifier_lr is None or cfg.encoder_lr is None) and paper is None:
        raise ConfigError(f"the paper gives learning rates for 1% and 10% only; set classifier_lr and encoder_lr "
                         f"for percent={cfg.percent}")
    classifier = cfg.classifier_lr if cfg.classifier_lr is not None else paper[0]
    encoder = cfg.encoder_lr if cfg.encoder_lr is not None else paper[1]
    return classifier, encoder


def labelled_indices(cfg: SemiSupervisedConfig, train_set) -> tuple[torch.Tensor, str]:
    """Indices of the labelled images and where the subset came from."""
    split = cfg.split
    if split == "auto":
        split = "simclr" if cfg.subset_file or cfg.data.name == "imagenet" else "stratified"
    if split == "simclr":
        path = simclr_subset_file(cfg.percent, cfg.subset_file)
        return indices_of_names(sample_paths(train_set), read_subset_file(path), f"subset file {path}"), str(path)
    if split == "stratified":
        return stratified_fraction(train_set.targets, cfg.percent / 100, cfg.seed), "stratified"
    raise ValueError(f"split must be auto, simclr or stratified, not '{cfg.split}'")


def fine_tune(cfg: SemiSupervisedConfig) -> dict:
    classifier_lr, encoder_lr = learning_rates(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    backbone, feature_dim, in_chans = load_eval_backbone(cfg.checkpoint)
    info = dataset_info(cfg.data)
    train_set = build_dataset(cfg.data, "train")
    indices, source = labelled_indices(cfg, train_set)
    if (torch.as_tensor(train_set.targets)[indices] < 0).any():
        raise DataError(f"dataset '{cfg.data.name}' has unlabelled images in the labelled subset")
    check_classes(torch.as_tensor(train_set.targets)[indices], cfg.data.name)
    classifier = nn.Linear(feature_dim, info.num_classes)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    backbone.to(device), classifier.to(device)
    train_encoder = encoder_lr > 0
    backbone.requires_grad_(train_encoder)
    groups = [{"params": classifier.parameters(), "base_lr": classifier_lr}]
    if train_encoder:
        groups.append({"params": backbone.parameters(), "base_lr": encoder_lr})
    optimizer = torch.optim.SGD(groups, lr=classifier_lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    labelled = Subset(TransformedDataset(train_set, build_supervised_transform(cfg.augment, info, in_chans)),
                      indices.tolist())
    loader = DataLoader(labelled, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                        drop_last=False, generator=torch.Generator().manual_seed(cfg.seed),
                        pin_memory=device.type == "cuda")

    def cosine(step: int, total_steps: int) -> float:
        return warmup_cosine(step, total_steps, 0, 1.0)

    train_on_images(backbone, classifier, loader, optimizer, cfg.epochs, cosine, train_encoder, device,
                    cfg.progress_bar)
    test_set = build_dataset(cfg.data, "test")
    test_x, test_y = extract_features(backbone, test_set, build_eval_transform(info, in_chans, cfg.image_size),
                                      cfg.batch_size, device, cfg.num_workers, progress=cfg.progress_bar)
    accuracy = classifier_accuracy(classifier, test_x, test_y)
    return {"top1": accuracy["top1"], "top5": accuracy["top5"], "num_labelled": len(indices),
            "subset": source, "classifier_lr": classifier_lr, "encoder_lr": encoder_lr}


def main(argv: list[str] | None = None) -> int:
    return run_protocol(SemiSupervisedConfig, fine_tune, argv,
                        protocol=lambda cfg: f"semi_supervised_{cfg.percent:g}pct")


if __name__ == "__main__":
    sys.exit(main())
