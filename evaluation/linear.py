"""Linear probe: a linear classifier trained on frozen features (MSBReg supplement 2.1, VCReg App. C).

``train_linear_classifier`` fits ``nn.Linear`` on cached features with mini-batch SGD, LARS or AdamW
(``common.optim``) and a per-step schedule (``common.schedules``): warm-up + cosine, or step decay by
``gamma`` at fractions of training (the Places205 / iNaturalist protocol: x0.1 twice at equal intervals).
Features are optionally standardised with the training mean and standard deviation (a BatchNorm without
affine parameters, as in MAE's linear probe), which makes one learning rate work across backbones; the
standardisation is folded into the returned layer, so it applies to raw features.

Command line: ``python -m evaluation.linear --checkpoint PATH [data.name=... probe.epochs=100 ...]``:
features of the train and test splits are extracted once (no augmentation) and cached in memory, the
classifier is trained on them, and top-1 / top-5 on the test split go to a JSON file. With
``augment=true`` the classifier instead sees random-resized-crop + flip views (``train_augment``) of the
training images through the frozen backbone at every step (the SimCLR / BYOL protocol; no caching).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.augment import AugmentConfig, build_supervised_transform
from common.config_types import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from common.data import DataConfig, build_dataset, dataset_info, stratified_subset
from common.errors import DataError
from common.optim import OptimConfig, build_optimizer, param_groups
from common.schedules import step_decay, warmup_cosine
from evaluation.cli import (
    dataset_transform,
    labelled_features,
    load_eval_backbone,
    resolve_device,
    run_protocol,
)
from evaluation.features import TransformedDataset, extract_features
from evaluation.knn import top_k_accuracy
from evaluation.labelled import check_classes
from evaluation.progress import progress_bar


@dataclass
class LinearProbeConfig:
    epochs: PositiveInt = 100     # passes over the (cached) training features
    batch_size: PositiveInt = 256  # training batch of the probe
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"  # adamw: VCReg's subclass probe (Appendix C.2)
    lr: PositiveFloat = 0.1       # peak learning rate (not scaled with the batch size)
    momentum: NonNegativeFloat = 0.9  # SGD / LARS
    nesterov: bool = False        # SGD / LARS: Nesterov momentum
    weight_decay: NonNegativeFloat = 0.0  # L2 penalty on the classifier
    eta: PositiveFloat = 1e-3     # LARS trust coefficient
    schedule: Literal["cosine", "step"] = "cosine"  # cosine (after warmup_epochs of linear warm-up) | step
    warmup_epochs: NonNegativeFloat = 0.0  # cosine: linear warm-up epochs before it
    milestones: list[Fraction] = field(default_factory=lambda: [1 / 3, 2 / 3])  # step: fractions of training
    gamma: PositiveFloat = 0.1    # step: the factor at each milestone
    standardize: bool = True      # standardise features with the training mean / std


def _learning_rate(cfg: LinearProbeConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "cosine":
        return warmup_cosine(step, total_steps, round(cfg.warmup_epochs * steps_per_epoch), cfg.lr, 0.0)
    if cfg.schedule == "step":
        return step_decay(step, [round(m * total_steps) for m in cfg.milestones], cfg.lr, cfg.gamma)
    raise ValueError(f"probe.schedule must be cosine or step, not '{cfg.schedule}'")


def _fold_standardization(classifier: nn.Linear, mean: Tensor, std: Tensor) -> nn.Linear:
    """W (x - mean) / std + b  ==  (W / std) x + (b - W mean / std)."""
    with torch.no_grad():
        weight = classifier.weight / std
        classifier.bias -= weight @ mean
        classifier.weight.copy_(weight)
    return classifier


def new_classifier(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer with N(0, 0.01^2) weights and zero bias."""
    classifier = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        classifier.weight.normal_(0.0, 0.01, generator=generator)
        classifier.bias.zero_()
    return classifier


def probe_optimizer(classifier: nn.Module, cfg: LinearProbeConfig) -> torch.optim.Optimizer:
    """SGD, LARS or AdamW (``common.optim``; AdamW with PyTorch's betas) over the classifier; every group carries
    ``base_lr = cfg.lr``."""
    if cfg.optimizer not in ("sgd", "lars", "adamw"):
        raise ValueError(f"probe.optimizer must be sgd, lars or adamw, not '{cfg.optimizer}'")
    optim_cfg = OptimConfig(name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                            nesterov=cfg.nesterov, eta=cfg.eta)
    return build_optimizer(optim_cfg, param_groups(classifier, cfg.lr, cfg.weight_decay))


def train_on_images(backbone: nn.Module, classifier: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    epochs: int, lr_factor: Callable[[int, int], float], train_encoder: bool,
                    device: torch.device, progress: bool = False) -> None:
    """Cross-entropy training of ``classifier(backbone(images))`` for ``epochs`` passes over ``loader``.

    At step s of T, each parameter group's lr is ``group["base_lr"] * lr_factor(s, T)``. A frozen encoder
    (``train_encoder=False``) runs in eval mode without gradients: its BatchNorm statistics stay fixed.
    ``progress`` shows a bar of the steps.
    """
    total_steps, step = epochs * len(loader), 0
    bar = progress_bar(total=total_steps, desc="fine-tune" if train_encoder else "probe", enabled=progress)
    for _ in range(epochs):
        backbone.train(train_encoder)
        for images, labels in loader:
            factor = lr_factor(step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with torch.set_grad_enabled(train_encoder):
                features = backbone(images.to(device, non_blocking=True))
            loss = F.cross_entropy(classifier(features), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
    bar.close()


def train_linear_classifier(train_features: Tensor, train_labels: Tensor, num_classes: int,
                            cfg: LinearProbeConfig, device: torch.device | str = "cpu",
                            seed: int = 0, progress: bool = False) -> nn.Linear:
    """A linear classifier ``[D] -> [num_classes]`` trained with cross-entropy on frozen features
    (``progress``: a bar of the steps)."""
    if train_features.ndim != 2 or train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"linear probe needs features [N, D] and labels [N]; got {tuple(train_features.shape)} "
                         f"and {tuple(train_labels.shape)}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    x = train_features.to(device=device, dtype=torch.float32)
    y = train_labels.to(device=device, dtype=torch.long)
    mean = x.mean(dim=0) if cfg.standardize else torch.zeros(x.shape[1], device=device)
    std = x.std(dim=0).clamp_min(1e-6) if cfg.standardize else torch.ones(x.shape[1], device=device)
    x = (x - mean) / std
    classifier = new_classifier(x.shape[1], num_classes, generator).to(device)
    optimizer = probe_optimizer(classifier, cfg)
    steps_per_epoch = max(1, math.ceil(x.shape[0] / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    step = 0
    bar = progress_bar(total=total_steps, desc="linear probe", enabled=progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        for start in range(0, x.shape[0], cfg.batch_size):
            lr = _learning_rate(cfg, step, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(classifier(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
    bar.close()
    return _fold_standardization(classifier, mean, std)


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, features: Tensor, labels: Tensor,
                        batch_size: int = 65536) -> dict[str, float]:
    """``{"top1", "top5"}`` of ``classifier`` on features (evaluated in batches on the classifier's device)."""
    device = next(classifier.parameters()).device
    logits = torch.cat([classifier(features[i:i + batch_size].to(device, torch.float32)).cpu()
                        for i in range(0, features.shape[0], batch_size)])
    accuracy = top_k_accuracy(logits, labels, (1, 5))
    return {"top1": accuracy[1], "top5": accuracy[5]}


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 cfg: LinearProbeConfig, num_classes: int | None = None, device: torch.device | str = "cpu",
                 seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Train on the train features, report top-1 / top-5 on the test features."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = train_linear_classifier(train_features, train_labels, num_classes, cfg, device, seed, progress)
    return classifier_accuracy(classifier, test_features, test_labels)


@dataclass
class LinearEvalConfig:
    """``python -m evaluation.linear``: linear probe of a frozen backbone, on cached features by default."""

    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    data: DataConfig = field(default_factory=DataConfig)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    augment: bool = False              # train on augmented images (no caching; probe.standardize is ignored)
    train_augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(name="supervised"))
    image_size: int | None = None   # evaluation resolution; None: the dataset's native size
    batch_size: int = 256              # feature extraction batch
    num_workers: NonNegativeInt = 4  # DataLoader worker processes (0: load in this process)
    max_train_images: PositiveInt | None = None  # this many training images (stratified); None: all
    seed: int = 0  # the classifier's initialisation and data order
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True          # tqdm bars for the extraction and the probe (like the trainer's)


def probe_with_augmentation(cfg: LinearEvalConfig) -> dict[str, float]:
    """The classifier sees ``train_augment`` views of the training images through the frozen backbone."""
    device = resolve_device(cfg.device)
    backbone, feature_dim, in_chans = load_eval_backbone(cfg.checkpoint)
    backbone.to(device).requires_grad_(False)
    info = dataset_info(cfg.data)
    train_set = build_dataset(cfg.data, "train")
    if cfg.max_train_images is not None and cfg.max_train_images < len(train_set):
        train_set = train_set.subset(stratified_subset(train_set.targets, cfg.max_train_images))
    if (torch.as_tensor(train_set.targets) < 0).any():
        raise DataError(f"dataset '{cfg.data.name}' has unlabelled training images; the probe needs labels")
    check_classes(train_set.targets, cfg.data.name)
    generator = torch.Generator().manual_seed(cfg.seed)
    classifier = new_classifier(feature_dim, info.num_classes, generator).to(device)
    optimizer = probe_optimizer(classifier, cfg.probe)
    transform = build_supervised_transform(cfg.train_augment, info, in_chans)
    loader = DataLoader(TransformedDataset(train_set, transform), batch_size=cfg.probe.batch_size, shuffle=True,
                        num_workers=cfg.num_workers, generator=generator, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)

    def lr_factor(step: int, total_steps: int) -> float:
        return _learning_rate(cfg.probe, step, total_steps, steps_per_epoch) / cfg.probe.lr

    train_on_images(backbone, classifier, loader, optimizer, cfg.probe.epochs, lr_factor, False, device,
                    cfg.progress_bar)
    test_x, test_y = extract_features(backbone, build_dataset(cfg.data, "test"), dataset_transform(cfg, in_chans),
                                      cfg.batch_size, device, cfg.num_workers, progress=cfg.progress_bar)
    return classifier_accuracy(classifier, test_x, test_y)


def _evaluate_cli(cfg: LinearEvalConfig) -> dict:
    if cfg.augment:
        accuracy = probe_with_augmentation(cfg)
        return {"linear_top1": accuracy["top1"], "linear_top5": accuracy["top5"]}
    train_x, train_y, test_x, test_y = labelled_features(cfg)
    accuracy = linear_probe(train_x, train_y, test_x, test_y, cfg.probe, device=resolve_device(cfg.device),
                            seed=cfg.seed, progress=cfg.progress_bar)
    return {"linear_top1": accuracy["top1"], "linear_top5": accuracy["top5"]}


def main(argv: list[str] | None = None) -> int:
    return run_protocol(LinearEvalConfig, _evaluate_cli, argv, protocol="linear")


if __name__ == "__main__":
    sys.exit(main())
