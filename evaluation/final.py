"""The evaluation a trainer runs before and after training: weighted k-NN, a linear probe, and the method's own
figures.

``evaluate_method(method, cfg, accelerator, stage)`` is the ``evaluate`` callback of
``common.entry.run_trainer`` (``common`` cannot import ``evaluation``). It reads ``cfg.data``,
``cfg.augment.image_size``, ``cfg.backbone.in_chans``, ``cfg.eval`` (``FinalEvalConfig``) and ``cfg.seed``.
The frozen backbone features of the train split (the k-NN bank and the probe's training set) and of the test
split (the queries) are extracted once per stage, without augmentation; the linear probe trains on these
cached features, and ``method.evaluate_features`` computes the method's own figures (a classifier's test
top-1, a latent's code, neural collapse) from the same features.

Results keys (``results.json``): ``knn_top1_k<k>`` for every k of the k-NN protocol (``eval.knn_protocol``,
or ``eval.knn_k``; ``..._at_init`` before training), ``linear_top1``, ``linear_top5``, then whatever the method
adds (``docs/design.md`` lists them).

Only the main process evaluates, on ``accelerator.device``, with the unwrapped method; the other processes
return ``{}`` at once (no collective operation happens inside, so nothing waits on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from common.config_types import Length, NonNegativeFloat, PositiveFloat, PositiveInt
from common.method import FeatureSplits, Method
from evaluation.knn import k_used, knn_accuracy, knn_settings
from evaluation.labelled import train_test_features
from evaluation.linear import LinearProbeConfig, linear_probe


@dataclass
class FinalEvalConfig:
    # wu2018: k = 200 and 20, T = 0.1 (Wu et al. 2018) | dino: k = 20 and 200, T = 0.07 (DINO, solo-learn)
    knn_protocol: Literal["wu2018", "dino"] = "wu2018"
    # the k of each weighted vote (key knn_top1_k<k>); None: the protocol's
    knn_k: Annotated[list[PositiveInt], Length(low=1)] | None = None
    knn_temperature: PositiveFloat | None = None  # T of the vote's weights exp(sim / T); None: the protocol's
    knn_at_init: bool = True           # also evaluate k-NN before training (keys knn_top1_k<k>_at_init)
    linear: bool = True                # linear probe on cached frozen features after training
    linear_epochs: PositiveInt = 30    # the probe's epochs over the cached features
    linear_lr: PositiveFloat = 0.1     # SGD, cosine to 0, on standardised features
    linear_batch_size: PositiveInt = 512  # the probe's batch of cached features
    linear_weight_decay: NonNegativeFloat = 0.0  # the probe's L2 penalty
    batch_size: PositiveInt = 512      # feature extraction batch
    max_train_images: PositiveInt | None = None  # k-NN bank / probe training set: this many train images, stratified
    # this many test images, stratified: smoke runs only (the study's tiny budget); None, the whole test split,
    # for every figure that is reported
    max_test_images: PositiveInt | None = None

    @staticmethod
    def keys_added(values: dict) -> dict:
        """Before the key existed every test image was evaluated (``common.config_upgrade.values_before_added_keys``)."""
        return {"max_test_images": None}


def knn_figures(features: FeatureSplits, ecfg: FinalEvalConfig, device: torch.device, progress: bool,
                suffix: str = "") -> dict[str, float]:
    """``knn_top1_k<k><suffix>`` for every k of the protocol: the weighted k-NN vote of each test feature over
    the train bank; ``knn_k<k>_used<suffix>`` for a k above the bank (``evaluation.knn.k_used``)."""
    settings = knn_settings(ecfg.knn_protocol, temperature=ecfg.knn_temperature)
    ks = ecfg.knn_k if ecfg.knn_k is not None else [settings.k, settings.k_also]
    bank = features.train_x.to(device)
    return {f"knn_top1_k{k}{suffix}": knn_accuracy(bank, features.train_y, features.test_x, features.test_y, k=k,
                                                   temperature=settings.temperature, progress=progress)["top1"]
            for k in ks} | k_used(ks, len(bank), suffix)


def evaluate_method(method: Method, cfg, accelerator, stage: str) -> dict:
    """Figures for ``results.json`` (see the module docstring); ``stage`` is "init" or "final"."""
    if stage not in ("init", "final"):
        raise ValueError(f"evaluation stage must be 'init' or 'final', not '{stage}'")
    ecfg: FinalEvalConfig = cfg.eval
    if not accelerator.is_main_process or (stage == "init" and not ecfg.knn_at_init):
        return {}
    device = accelerator.device
    method = accelerator.unwrap_model(method)
    progress = cfg.progress_bar
    features = train_test_features(method.backbone, cfg.data, cfg.backbone.in_chans, cfg.augment.image_size,
                                   ecfg.batch_size, ecfg.max_train_images, device, progress, ecfg.max_test_images)
    if stage == "init":
        return knn_figures(features, ecfg, device, progress, suffix="_at_init")
    results = knn_figures(features, ecfg, device, progress)
    if ecfg.linear:
        probe = LinearProbeConfig(epochs=ecfg.linear_epochs, batch_size=ecfg.linear_batch_size, lr=ecfg.linear_lr,
                                  weight_decay=ecfg.linear_weight_decay)
        accuracy = linear_probe(*features, probe, device=device, seed=cfg.seed, progress=progress)
        results |= {"linear_top1": accuracy["top1"], "linear_top5": accuracy["top5"]}
    return results | method.evaluate_features(features)
