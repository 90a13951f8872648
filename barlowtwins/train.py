"""Barlow Twins pre-training: ``accelerate launch barlowtwins/train.py --config barlowtwins/configs/X.yaml``."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from torch import nn

from barlowtwins.method import BarlowTwins, BarlowTwinsConfig
from common.entry import run_trainer
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method


@dataclass
class BarlowTwinsTrainConfig(TrainConfig):
    method: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)


CONFIG_SCHEMA = BarlowTwinsTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: BarlowTwinsTrainConfig, backbone: nn.Module, feature_dim: int) -> BarlowTwins:
    return BarlowTwins(backbone, feature_dim, cfg.method)


def main(argv: list[str] | None = None) -> int:
    return run_trainer(CONFIG_SCHEMA, build_method, evaluate=evaluate_method, argv=argv,
                       script="barlowtwins/train.py", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
