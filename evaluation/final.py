"""The evaluation a trainer runs before and after training: weighted k-NN, a linear probe, and the method's own
figures.

``evaluate_method(method, cfg, accelerator, stage)`` is the ``evaluate`` callback of
``common.entry.run_trainer`` (``common`` cannot import ``evaluation``). It reads ``cfg.data``,
``cfg.augment.image_size``, ``cfg.backbone.in_chans``, ``cfg.eval`` (``FinalEvalConfig``) and ``cfg.seed``.
The frozen backbone features of the train split (the k-NN bank and the probe's training set) and of the test
split (the queries) are extracted once per stage, without augmentation; the linear probe trains on these
cached features, and ``method.evaluate_features`` computes the method's own figures (a classifier's test
top-1, a latent's code, neural collapse) from the same features.

Results keys (``results.json``): ``knn_top1_k<k>`` for every k of ``eval.knn_k`` (and ``..._at_init`` before
training), ``linear_top1``, ``linear_top5``, then whatever the method adds.

Only the main process evaluates, on ``accelerator.device``, with the unwrapped method; the other processes
return ``{}`` at once (no collective operation happens inside, so nothing waits on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.config_types import PositiveInt
from common.method import FeatureSplits, Method
from evaluation.knn import knn_accuracy
from evaluation.labelled import train_test_features
from evaluation.linear import LinearProbeConfig, linear_probe


@dataclass
class FinalEvalConfig:
    knn_k: list[int] = field(default_factory=lambda: [200, 20])  # k of each weighted k-NN vote (Wu et al.: 200)
    knn_temperature: float = 0.1       # T of the vote's weights exp(sim / T) (Wu et al.: 0.1)
    knn_at_init: bool = True           # also evaluate k-NN before training (keys knn_top1_k<k>_at_init)
    linear: bool = True                # linear probe on cached frozen features after training
    linear_epochs: PositiveInt = 30    # the probe's epochs over the cached features
    linear_lr: float = 0.1             # SGD, cosine to 0, on standardised features
    linear_batch_size: PositiveInt = 512
    linear_weight_decay: float = 0.0
    batch_size: PositiveInt = 512      # feature extraction batch
    max_train_images: PositiveInt | None = None  # k-NN bank / probe training set: this many train images, stratified


def knn_figures(features: FeatureSplits, ks: list[int], temperature: float, device: torch.device,
                suffix: str = "") -> dict[str, float]:
    """``knn_top1_k<k><suffix>`` for every k: the weighted k-NN vote of each test feature over the train bank."""
    bank = features.train_x.to(device)
    return {f"knn_top1_k{k}{suffix}": knn_accuracy(bank, features.train_y, features.test_x, features.test_y, k=k,
                                                   temperature=temperature)["top1"] for k in ks}


def evaluate_method(method: Method, cfg, accelerator, stage: str) -> dict:
    """Figures for ``results.json`` (see the module docstring); ``stage`` is "init" or "final"."""
    if stage not in ("init", "final"):
        raise ValueError(f"evaluation stage must be 'init' or 'final', not '{stage}'")
    ecfg: FinalEvalConfig = cfg.eval
    if not accelerator.is_main_process or (stage == "init" and not ecfg.knn_at_init):
        return {}
    device = accelerator.device
    method = accelerator.unwrap_model(method)
    features = train_test_features(method.backbone, cfg.data, cfg.backbone.in_chans, cfg.augment.image_size,
                                   ecfg.batch_size, ecfg.max_train_images, device)
    if stage == "init":
        return knn_figures(features, ecfg.knn_k, ecfg.knn_temperature, device, suffix="_at_init")
    results = knn_figures(features, ecfg.knn_k, ecfg.knn_temperature, device)
    if ecfg.linear:
        probe = LinearProbeConfig(epochs=ecfg.linear_epochs, batch_size=ecfg.linear_batch_size, lr=ecfg.linear_lr,
                                  weight_decay=ecfg.linear_weight_decay)
        accuracy = linear_probe(*features, probe, device=device, seed=cfg.seed)
        results |= {"linear_top1": accuracy["top1"], "linear_top5": accuracy["top5"]}
    return results | method.evaluate_features(features)
