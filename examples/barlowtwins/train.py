"""Barlow Twins pre-training, the worked example of docs/adding_a_method.md.

    python examples/barlowtwins/train.py          # Fashion-MNIST on a CPU (configs/fashion_mnist_barlow_twins.yaml)
    accelerate launch examples/barlowtwins/train.py --config FILE.yaml [key=value ...]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from torch import nn

from common.entry import trainer_main
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
from examples.barlowtwins.method import BarlowTwins, BarlowTwinsConfig


@dataclass
class BarlowTwinsTrainConfig(TrainConfig):
    method: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)


CONFIG_SCHEMA = BarlowTwinsTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: BarlowTwinsTrainConfig, backbone: nn.Module, feature_dim: int) -> BarlowTwins:
    return BarlowTwins(backbone, feature_dim, cfg.method)


main = trainer_main(CONFIG_SCHEMA, build_method, evaluate=evaluate_method,
                    default_config=Path(__file__).resolve().parent / "configs" / "fashion_mnist_barlow_twins.yaml")

if __name__ == "__main__":
    sys.exit(main())
