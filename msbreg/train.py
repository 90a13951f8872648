"""Train BYOL or MSBReg.

    accelerate launch msbreg/train.py --config msbreg/configs/<file>.yaml [key=value ...]
    python msbreg/train.py       # the quickstart: MSBReg (K = 4) on Fashion-MNIST on a CPU, then k-NN and a probe

``method.name`` picks the method: ``msbreg`` (K = ``augment.num_views`` views, multiview centroid loss plus
the weighted regularisers) or ``byol`` (2 views, symmetrised BYOL loss). The defaults are the supplement's
recipe (sections 1.1-1.3): LARS, peak lr = base_lr x batch/256 x K with base_lr 0.4 (ImageNet-100), 10 warm-up
epochs then a per-step cosine, weight decay 1e-5 without biases and norm layers, batch 512, 320 epochs,
augmentation of supplementary Table 1 with K = 4 views. Without ``--config`` the quickstart file
(``configs/fashion_mnist_msbreg.yaml``, under 10 minutes on two CPU cores) is read over these defaults.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from torch import nn

from common.augment import AugmentConfig
from common.entry import trainer_main
from common.errors import ConfigError
from common.method import Method
from common.optim import OptimConfig
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
from msbreg.byol import BYOL, BYOLConfig
from msbreg.msbreg import MSBReg, MSBRegConfig

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_msbreg.yaml"


def msbreg_augment(views: int = 4) -> AugmentConfig:
    """Supplementary Table 1: crop p=1, flip 0.5, jitter p=0.8 with 0.4/0.4/0.2/0.1, colour dropping 0.2, blur
    1.0 and solarize 0.2 on every one of the K views."""
    return AugmentConfig(num_views=views, flip_prob=0.5, jitter_prob=0.8, brightness=0.4, contrast=0.4,
                         saturation=0.2, hue=0.1, grayscale_prob=0.2, blur_prob=[1.0], solarize_prob=[0.2])


def msbreg_optim() -> OptimConfig:
    return OptimConfig(name="lars", lr=0.4, lr_scaling="linear_views", weight_decay=1e-5, warmup_epochs=10.0,
                       exclude_bias_and_norm=True)


@dataclass
class MSBRegTrainConfig(TrainConfig):
    epochs: int = 320
    batch_size: int = 512
    augment: AugmentConfig = field(default_factory=msbreg_augment)
    optim: OptimConfig = field(default_factory=msbreg_optim)
    method: MSBRegConfig | BYOLConfig = field(default_factory=MSBRegConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)


CONFIG_SCHEMA = MSBRegTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: MSBRegTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
    """The method ``cfg.method`` (its dataclass) describes, on ``augment.num_views`` views."""
    views = cfg.augment.num_views
    if isinstance(cfg.method, MSBRegConfig):
        if views < 2:
            raise ConfigError(f"method.name=msbreg needs augment.num_views >= 2, got {views}")
        return MSBReg(backbone, feature_dim, cfg.method)
    if views != 2:
        raise ConfigError(f"method.name=byol needs augment.num_views=2, got {views}")
    return BYOL(backbone, feature_dim, cfg.method)


main = trainer_main(CONFIG_SCHEMA, build_method, evaluate=evaluate_method, default_config=QUICKSTART)


if __name__ == "__main__":
    raise SystemExit(main())
