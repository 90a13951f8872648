"""Training with VCReg layers in the backbone: supervised (plain, DeCov), SimCLR and VICReg.

    accelerate launch vcreg/train.py --config vcreg/configs/imagenet_convnext_tiny_vcreg.yaml [key=value ...]
    python vcreg/train.py --config vcreg/configs/fashion_mnist_vcreg.yaml       # the CPU-sized run

``vcreg.enabled=false`` gives the baseline of the same recipe. Besides the trainer's k-NN and linear probe,
a supervised run's ``results.json`` holds ``test_top1`` (its own classifier on the test set), ``cdnv`` and
``ncc_top1`` (neural collapse of the training features, eqs. 8-9) and ``ncc_top1_test``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the repository's packages, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from torch import nn

from common.data import dataset_info
from common.entry import run_trainer
from common.errors import ConfigError
from common.method import Method
from common.train_config import TrainConfig
from evaluation.final import FinalEvalConfig, evaluate_method
from evaluation.labelled import train_test_features
from evaluation.linear import LinearProbeConfig, linear_probe
from vcreg.method import SupervisedConfig, VCRegLayerConfig, VCRegMethodConfig, build_vcreg_method
from vcreg.placement import apply_vcreg

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_vcreg.yaml"


@dataclass
class VCRegTrainConfig(TrainConfig):
    method: VCRegMethodConfig = field(default_factory=SupervisedConfig)
    vcreg: VCRegLayerConfig = field(default_factory=VCRegLayerConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    # Table 5: after training on CIFAR-100's 20 superclasses (data.labels=coarse), linear-probe the 100
    # subclasses with the eval.linear_* settings; results key subclass_linear_top1
    subclass_probe: bool = False


CONFIG_SCHEMA = VCRegTrainConfig  # the schema common.sweep validates a sweep's runs against


def build_method(cfg: VCRegTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
    if cfg.subclass_probe and not (cfg.data.name == "cifar100" and cfg.data.labels == "coarse"):
        raise ConfigError("subclass_probe needs data.name=cifar100 and data.labels=coarse "
                          f"(got {cfg.data.name}, labels={cfg.data.labels})")
    layer = cfg.vcreg
    if layer.enabled:
        apply_vcreg(backbone, layer.placement, alpha=layer.alpha, beta=layer.beta, eps=layer.eps,
                    delta=layer.delta, all_reduce=layer.all_reduce, normalization=layer.normalization,
                    overrides=layer.overrides)
    return build_vcreg_method(cfg.method, backbone, feature_dim, dataset_info(cfg.data).num_classes)


def evaluate(method: Method, cfg: VCRegTrainConfig, accelerator, stage: str) -> dict:
    """The final evaluation (with the method's test top-1 and neural collapse) and, for Table 5, a linear probe
    of the subclasses on the features of the superclass-trained backbone."""
    results = evaluate_method(method, cfg, accelerator, stage)
    if stage != "final" or not cfg.subclass_probe or not accelerator.is_main_process:
        return results
    device = accelerator.device
    fine = train_test_features(method.backbone, replace(cfg.data, labels="fine"), cfg.backbone.in_chans,
                               cfg.augment.image_size, cfg.eval.batch_size, cfg.eval.max_train_images, device,
                               cfg.progress_bar)
    probe = LinearProbeConfig(epochs=cfg.eval.linear_epochs, batch_size=cfg.eval.linear_batch_size,
                              lr=cfg.eval.linear_lr, weight_decay=cfg.eval.linear_weight_decay)
    results["subclass_linear_top1"] = linear_probe(*fine, probe, device=device, seed=cfg.seed,
                                                   progress=cfg.progress_bar)["top1"]
    return results


def main(argv: list[str] | None = None) -> int:
    return run_trainer(VCRegTrainConfig, build_method, evaluate=evaluate, argv=argv, default_config=QUICKSTART,
                       script="vcreg/train.py", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
