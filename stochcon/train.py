"""SimCLR and StochCon pre-training.

    accelerate launch stochcon/train.py --config stochcon/configs/simclr_cifar10_resnet50.yaml [key=value ...]
    python stochcon/train.py            # the quickstart: SimCLR on Fashion-MNIST on a CPU, then k-NN and a linear probe
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch import nn

from common.method import Method
from common.trainer import TrainConfig
from common.trainer import main as train_main
from evaluation.final import FinalEvalConfig, evaluate_backbone
from stochcon.simclr import SimCLR, SimCLRConfig
from stochcon.stochcon import build_stochcon, build_supervised

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_simclr.yaml"


@dataclass
class StochConTrainConfig(TrainConfig):
    method: SimCLRConfig = field(default_factory=SimCLRConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)


CONFIG_SCHEMA = StochConTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: StochConTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
    if cfg.method.name == "simclr":
        return SimCLR(backbone, feature_dim, cfg.method, cfg.augment.num_views)
    if cfg.method.name == "stochcon":
        return build_stochcon(cfg, backbone, feature_dim)
    if cfg.method.name == "supervised":
        return build_supervised(cfg, backbone, feature_dim)
    raise ValueError(f"method.name must be simclr, stochcon or supervised, not '{cfg.method.name}'")


def main(argv: list[str] | None = None) -> int:
    return train_main(StochConTrainConfig, build_method, argv, evaluate=evaluate_backbone, default_config=QUICKSTART)


if __name__ == "__main__":
    sys.exit(main())
