"""SimCLR and StochCon pre-training.

    accelerate launch stochcon/train.py --config stochcon/configs/simclr_cifar10_resnet50.yaml [key=value ...]
    python stochcon/train.py            # the quickstart: SimCLR on Fashion-MNIST on a CPU, then k-NN and a linear probe
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from torch import nn

from common.entry import run_trainer
from common.method import Method
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
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
    return run_trainer(StochConTrainConfig, build_method, evaluate=evaluate_method, argv=argv,
                       default_config=QUICKSTART, script="stochcon/train.py", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
