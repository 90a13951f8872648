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

from common.data import dataset_info
from common.entry import trainer_main
from common.errors import ConfigError
from common.method import Method
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
from stochcon.simclr import SimCLR, SimCLRConfig
from stochcon.stochcon import StochCon, StochConConfig
from stochcon.supervised import SupervisedBernoulli, SupervisedConfig

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_simclr.yaml"


@dataclass
class StochConTrainConfig(TrainConfig):
    method: SimCLRConfig | StochConConfig | SupervisedConfig = field(default_factory=SimCLRConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)


CONFIG_SCHEMA = StochConTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: StochConTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
    """The method ``cfg.method`` (its dataclass) describes; the global views are ``augment.num_views``."""
    views = cfg.augment.num_views + cfg.augment.local_crops
    if isinstance(cfg.method, SimCLRConfig) and views < 2:  # StochConConfig too: SimCLR contrasts pairs of views
        raise ConfigError(f"method.name={cfg.method.name} contrasts two views of each image: set augment.num_views "
                          f"to 2 or more (or add augment.local_crops), got {cfg.augment.num_views}")
    if isinstance(cfg.method, StochConConfig):
        return StochCon(backbone, feature_dim, cfg.method, cfg.augment.num_views)
    if isinstance(cfg.method, SupervisedConfig):
        return SupervisedBernoulli(backbone, feature_dim, cfg.method, dataset_info(cfg.data).num_classes)
    return SimCLR(backbone, feature_dim, cfg.method, cfg.augment.num_views)


main = trainer_main(CONFIG_SCHEMA, build_method, evaluate=evaluate_method, default_config=QUICKSTART)


if __name__ == "__main__":
    sys.exit(main())
