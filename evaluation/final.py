"""The evaluation a trainer runs before and after training: k-NN (k=200 and k=20) and a linear probe.

``evaluate_backbone(backbone, cfg, accelerator, stage)`` is the ``evaluate`` callback of
``common.trainer.main`` (``common`` cannot import ``evaluation``). It reads ``cfg.data``,
``cfg.augment.image_size``, ``cfg.backbone.in_chans``, ``cfg.eval`` (``FinalEvalConfig``) and ``cfg.seed``.
Features of the train split (the k-NN bank and the probe's training set) and of the test split (the
queries) are extracted once, without augmentation; the linear probe trains on these cached features.

Only the main process evaluates, on ``accelerator.device``, with the unwrapped backbone; the other
processes return ``{}`` at once (no collective operation happens inside, so nothing waits on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.augment import build_eval_transform
from common.data import build_dataset, dataset_info, stratified_subset
from evaluation.features import extract_features
from evaluation.knn import knn_accuracy
from evaluation.linear import LinearProbeConfig, linear_probe


@dataclass
class FinalEvalConfig:
    knn_k: int = 200
    knn_k_also: int = 20               # a second k reported as knn_top1_k<k>
    knn_temperature: float = 0.1
    knn_at_init: bool = True           # also evaluate k-NN before training (results key knn_top1_at_init)
    linear: bool = True                # linear probe on cached frozen features after training
    linear_epochs: int = 30
    linear_lr: float = 0.1             # SGD, cosine to 0, on standardised features
    linear_batch_size: int = 512
    linear_weight_decay: float = 0.0
    batch_size: int = 512              # feature extraction batch
    max_train_images: int | None = None  # k-NN bank / probe training set: this many train images, stratified


def _features(backbone: nn.Module, cfg, device: torch.device):
    info = dataset_info(cfg.data)
    transform = build_eval_transform(info, cfg.backbone.in_chans or info.channels, cfg.augment.image_size)
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    indices = None
    if cfg.eval.max_train_images is not None and cfg.eval.max_train_images < len(train_set):
        indices = torch.tensor(stratified_subset(train_set.targets, cfg.eval.max_train_images))
    batch, workers = cfg.eval.batch_size, cfg.data.num_workers
    train = extract_features(backbone, train_set, transform, batch, device, workers, indices)
    test = extract_features(backbone, test_set, transform, batch, device, workers)
    if (train[1] < 0).any() or (test[1] < 0).any():
        raise ValueError(f"dataset '{cfg.data.name}' has unlabelled train or test images: the final "
                         "evaluation needs labels (set eval.knn_at_init=false and eval.linear=false, and "
                         "evaluate with python -m evaluation on a labelled dataset)")
    return train, test


def evaluate_backbone(backbone: nn.Module, cfg, accelerator, stage: str) -> dict:
    """Figures for ``results.json``: stage "init" -> {"knn_top1_at_init"} (when ``eval.knn_at_init``);
    stage "final" -> {"knn_top1", "knn_top1_k<knn_k_also>", "linear_top1", "linear_top5"}
    (linear when ``eval.linear``)."""
    if stage not in ("init", "final"):
        raise ValueError(f"evaluation stage must be 'init' or 'final', not '{stage}'")
    ecfg: FinalEvalConfig = cfg.eval
    if not accelerator.is_main_process or (stage == "init" and not ecfg.knn_at_init):
        return {}
    device = accelerator.device
    (train_x, train_y), (test_x, test_y) = _features(accelerator.unwrap_model(backbone), cfg, device)
    bank = train_x.to(device)
    knn = knn_accuracy(bank, train_y, test_x, test_y, k=ecfg.knn_k, temperature=ecfg.knn_temperature)
    if stage == "init":
        return {"knn_top1_at_init": knn["top1"]}
    also = knn_accuracy(bank, train_y, test_x, test_y, k=ecfg.knn_k_also, temperature=ecfg.knn_temperature)
    results = {"knn_top1": knn["top1"], f"knn_top1_k{ecfg.knn_k_also}": also["top1"]}
    if ecfg.linear:
        probe = LinearProbeConfig(epochs=ecfg.linear_epochs, batch_size=ecfg.linear_batch_size, lr=ecfg.linear_lr,
                                  weight_decay=ecfg.linear_weight_decay)
        accuracy = linear_probe(train_x, train_y, test_x, test_y, probe, device=device, seed=cfg.seed)
        results |= {"linear_top1": accuracy["top1"], "linear_top5": accuracy["top5"]}
    return results
