"""Training with VCReg layers in the backbone: supervised (plain, DeCov), SimCLR and VICReg.

    accelerate launch vcreg/train.py --config vcreg/configs/imagenet_convnext_tiny_vcreg.yaml [key=value ...]
    python vcreg/train.py --config vcreg/configs/fashion_mnist_vcreg.yaml       # the CPU-sized run

``vcreg.enabled=false`` gives the baseline of the same recipe. Besides the trainer's k-NN and linear probe,
a supervised run's ``results.json`` holds ``test_top1`` (its own classifier on the test set), ``cdnv`` and
``ncc_top1`` (neural collapse of the training features, eqs. 8-9) and ``ncc_top1_test``. Table 5's runs train
on coarse labels (``data.labels=coarse``) and add ``subclass_linear_top1`` / ``_top5`` (``subclass_probe``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from torch import nn

from common.config_types import NonNegativeFloat, PositiveFloat, PositiveInt
from common.data import FINE_AND_COARSE, dataset_info
from common.entry import trainer_main
from common.errors import ConfigError
from common.method import Method
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
from evaluation.labelled import train_test_features
from evaluation.linear import LinearProbeConfig, linear_probe
from vcreg.method import (
    SimCLRConfig,
    SupervisedConfig,
    VCRegMethodConfig,
    VICRegConfig,
    build_vcreg_method,
)
from vcreg.placement import VCRegLayerConfig, apply_vcreg

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_vcreg.yaml"


@dataclass
class SubclassProbeConfig:
    """Table 5 / Appendix C.2: after training on the superclasses (``data.labels=coarse``), a linear classifier
    on the frozen features learns the subclasses (the same data with ``labels=fine``); results key
    ``subclass_linear_top1``."""

    enabled: bool = False  # run the probe after training (needs data.name cifar100|fashion_mnist|imagenet_hierarchy)
    epochs: PositiveInt = 100  # C.2: 100 epochs over the cached training features
    batch_size: PositiveInt = 256  # C.2
    optimizer: Literal["adamw", "sgd"] = "adamw"  # C.2: AdamW (PyTorch's betas 0.9, 0.999: C.2 names none)
    lr: PositiveFloat = 0.016  # C.2's base learning rate, cosine to 0 (not scaled with the batch size)
    weight_decay: NonNegativeFloat = 0.05  # C.2 (on the weights; the bias is not decayed, as in training)
    warmup_epochs: NonNegativeFloat = 0.0  # linear warm-up before the cosine (C.2 names none)
    # standardise features with the training mean/std before the classifier (not in C.2, which probes the raw
    # features: false)
    standardize: bool = False


@dataclass
class VCRegTrainConfig(TrainConfig):
    method: VCRegMethodConfig = field(default_factory=SupervisedConfig)
    vcreg: VCRegLayerConfig = field(default_factory=VCRegLayerConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    subclass_probe: SubclassProbeConfig = field(default_factory=SubclassProbeConfig)


CONFIG_SCHEMA = VCRegTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: VCRegTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
    if cfg.subclass_probe.enabled and not (cfg.data.name in FINE_AND_COARSE and cfg.data.labels == "coarse"):
        raise ConfigError(f"subclass_probe.enabled needs data.labels=coarse and a data.name with fine labels too "
                          f"({', '.join(FINE_AND_COARSE)}); got {cfg.data.name}, labels={cfg.data.labels}")
    views = (cfg.augment.num_views, cfg.augment.local_crops)
    if isinstance(cfg.method, (SimCLRConfig, VICRegConfig)) and views != (2, 0):  # a pair of views per image (C.4)
        raise ConfigError(f"method.name={cfg.method.name} takes exactly two views of each image: set "
                          f"augment.num_views=2 and augment.local_crops=0, got {views[0]} and {views[1]}")
    apply_vcreg(backbone, cfg.vcreg)
    return build_vcreg_method(cfg.method, backbone, feature_dim, dataset_info(cfg.data).num_classes)


def evaluate(method: Method, cfg: VCRegTrainConfig, accelerator, stage: str) -> dict:
    """The final evaluation (with the method's test top-1 and neural collapse) and, for Table 5, a linear probe
    of the subclasses on the features of the superclass-trained backbone."""
    results = evaluate_method(method, cfg, accelerator, stage)
    pcfg = cfg.subclass_probe
    if stage != "final" or not pcfg.enabled or not accelerator.is_main_process:
        return results
    device = accelerator.device
    fine_data = replace(cfg.data, labels="fine")
    fine = train_test_features(accelerator.unwrap_model(method).backbone, fine_data, cfg.backbone.in_chans,
                               cfg.augment.image_size, cfg.eval.batch_size, cfg.eval.max_train_images, device,
                               cfg.progress_bar, cfg.eval.max_test_images)
    probe = LinearProbeConfig(epochs=pcfg.epochs, batch_size=pcfg.batch_size, optimizer=pcfg.optimizer,
                              lr=pcfg.lr, weight_decay=pcfg.weight_decay, schedule="cosine",
                              warmup_epochs=pcfg.warmup_epochs, standardize=pcfg.standardize)
    accuracy = linear_probe(*fine, probe, num_classes=dataset_info(fine_data).num_classes, device=device,
                            seed=cfg.seed, progress=cfg.progress_bar)
    return results | {"subclass_linear_top1": accuracy["top1"], "subclass_linear_top5": accuracy["top5"]}


main = trainer_main(CONFIG_SCHEMA, build_method, evaluate=evaluate, default_config=QUICKSTART)


if __name__ == "__main__":
    sys.exit(main())
