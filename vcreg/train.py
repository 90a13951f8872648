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

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from common.config import ConfigError
from common.data import dataset_info
from common.method import Method
from common.trainer import TrainConfig
from common.trainer import main as train_main
from evaluation.final import FinalEvalConfig, _features, evaluate_backbone
from evaluation.linear import LinearProbeConfig, linear_probe
from vcreg.analysis.collapse import collapse_metrics
from vcreg.method import SupervisedClassifier, VCRegLayerConfig, VCRegMethodConfig, build_vcreg_method
from vcreg.placement import apply_vcreg

QUICKSTART = Path(__file__).resolve().parent / "configs" / "fashion_mnist_vcreg.yaml"


@dataclass
class VCRegTrainConfig(TrainConfig):
    method: VCRegMethodConfig = field(default_factory=VCRegMethodConfig)
    vcreg: VCRegLayerConfig = field(default_factory=VCRegLayerConfig)
    eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    # Table 5: after training on CIFAR-100's 20 superclasses (data.labels=coarse), linear-probe the 100
    # subclasses with the eval.linear_* settings; results key subclass_linear_top1
    subclass_probe: bool = False


CONFIG_SCHEMA = VCRegTrainConfig  # the schema common.sweep validates a sweep's runs against


class VCRegRun:
    """``build_method`` and ``evaluate`` of one run; the evaluation needs the classifier the method built."""

    def __init__(self) -> None:
        self.method: Method | None = None

    def build_method(self, cfg: VCRegTrainConfig, backbone: nn.Module, feature_dim: int) -> Method:
        if cfg.subclass_probe and not (cfg.data.name == "cifar100" and cfg.data.labels == "coarse"):
            raise ConfigError("subclass_probe needs data.name=cifar100 and data.labels=coarse "
                              f"(got {cfg.data.name}, labels={cfg.data.labels})")
        layer = cfg.vcreg
        if layer.enabled:
            apply_vcreg(backbone, layer.placement, alpha=layer.alpha, beta=layer.beta, eps=layer.eps,
                        delta=layer.delta, all_reduce=layer.all_reduce, normalization=layer.normalization,
                        overrides=layer.overrides)
        self.method = build_vcreg_method(cfg.method, backbone, feature_dim, dataset_info(cfg.data).num_classes)
        return self.method

    def evaluate(self, backbone: nn.Module, cfg: VCRegTrainConfig, accelerator, stage: str) -> dict:
        results = evaluate_backbone(backbone, cfg, accelerator, stage)
        if stage != "final" or not accelerator.is_main_process:
            return results
        device = accelerator.device
        train, test = _features(accelerator.unwrap_model(backbone), cfg, device)
        results |= collapse_metrics(train, test)
        if isinstance(self.method, SupervisedClassifier):
            with torch.no_grad():
                logits = self.method.classifier(test[0].to(device))
            results["test_top1"] = float((logits.argmax(1).cpu() == test[1]).float().mean())
        if cfg.subclass_probe:
            fine = replace(cfg, data=replace(cfg.data, labels="fine"))
            (train_x, train_y), (test_x, test_y) = _features(accelerator.unwrap_model(backbone), fine, device)
            probe = LinearProbeConfig(epochs=cfg.eval.linear_epochs, batch_size=cfg.eval.linear_batch_size,
                                      lr=cfg.eval.linear_lr, weight_decay=cfg.eval.linear_weight_decay)
            accuracy = linear_probe(train_x, train_y, test_x, test_y, probe, device=device, seed=cfg.seed)
            results["subclass_linear_top1"] = accuracy["top1"]
        return results


def main(argv: list[str] | None = None) -> int:
    run = VCRegRun()
    return train_main(VCRegTrainConfig, run.build_method, argv, evaluate=run.evaluate, default_config=QUICKSTART)


if __name__ == "__main__":
    sys.exit(main())
