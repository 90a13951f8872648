"""The scale of the off-diagonal covariances |C_ij| a network's VCReg layers see at initialisation: the rule
that sets eq. 7's delta in the paper-scale configs.

    python -m vcreg.analysis.covariance_scale --config vcreg/configs/imagenet_resnet50_vcreg.yaml \
        data.name=fashion_mnist data.root=/usr/share/datasets/fashion-mnist backbone.in_chans=3 [--quantile 0.9]

Eq. 7 ("Variance-Covariance Regularization Improves Representation Learning", Section 3.2) replaces the
squared covariances of eq. 4 by a smooth-L1 against "outliers in the covariance matrix", with no value for
its threshold delta. The rule used here (not from the paper): delta is the ``--quantile`` (0.9) of |C_ij|,
i != j, pooled over every VCReg position of the network at initialisation, so nine entries in ten start
under eq. 4's square and the outlying tenth get a bounded pull. The network is the config's backbone, built
with the config's seed, in training mode (batch statistics, as a training step sees it) on the first
``--images`` of a stratified draw of the config's training split through its evaluation transform (after
the BatchNorm layers the scale does not depend on the images' scale), with an identity forward at every
position (no mean removal). Prints one JSON object: the pooled quantile and each position's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.config import load_config
from common.data import dataset_info
from common.errors import ConfigError
from common.trainer import build_initial_method
from vcreg.analysis.gradient_share import training_batch
from vcreg.layer import channels_last_view, statistics_dtype
from vcreg.losses import covariance_matrix, off_diagonal
from vcreg.placement import insert_layers, remove_layers
from vcreg.train import VCRegTrainConfig


class CovarianceProbe(nn.Module):
    """Identity that records |C_ij|, i != j, of its input's rows (every location or token a sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        rows = channels_last_view(x)
        rows = rows.reshape(-1, rows.shape[-1]).to(statistics_dtype(x))
        self.values = off_diagonal(covariance_matrix(rows.detach())).abs()
        return x


def covariance_scale(backbone: nn.Module, placement: str, images: Tensor, quantile: float) -> dict:
    """The ``quantile`` of |C_ij| pooled over ``placement``'s positions and at each, one training-mode forward."""
    probes: dict[str, CovarianceProbe] = {}
    insert_layers(backbone, placement, lambda name: probes.setdefault(name, CovarianceProbe()))
    try:
        with torch.no_grad():
            backbone.train()(images)
    finally:
        remove_layers(backbone)
    values = {name: probe.values.double().cpu().numpy() for name, probe in probes.items()}
    return {"quantile": quantile, "pooled": float(np.quantile(np.concatenate(list(values.values())), quantile)),
            "positions": {name: float(np.quantile(v, quantile)) for name, v in values.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcreg.analysis.covariance_scale",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a vcreg/train.py config (YAML)")
    parser.add_argument("--images", type=int, default=256, help="images in the batch (default 256)")
    parser.add_argument("--quantile", type=float, default=0.9, help="quantile of |C_ij| (default 0.9)")
    args, overrides = parser.parse_known_args(argv)
    if args.images < 2 or not 0 <= args.quantile <= 1 or not args.config.is_file():
        print("error: --config must be a file, --images at least 2 and --quantile in [0, 1]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(VCRegTrainConfig, ["--config", str(args.config), *overrides])
        in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
        backbone = build_initial_method(cfg, lambda _cfg, network, _dim: network, in_chans)  # no VCReg layers
        images, _ = training_batch(cfg, args.images)
        result = covariance_scale(backbone, cfg.vcreg.placement, images, args.quantile)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"config": str(args.config), "overrides": overrides, "images": len(images), **result},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
