"""MSBReg: BYOL with K views, a multiview centroid loss, a singular value loss and a Brownian diffusive loss.

Total loss (this project's reading of the paper's Figure 1 caption and supplement):
    L = L_mc + lambda_s * L_s + lambda_b * L_b (+ lambda_u * L_uniform, the "BYOL + L_uniform" baseline of
    supplementary Table 3; 0 in MSBReg itself)
Every term is a pure function in ``msbreg.losses``; where the paper's words allow several formulas, the
reading is a switch of ``MSBRegConfig``. This module wires the terms and draws the Brownian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config_types import NonNegativeFloat, PositiveFloat
from common.distributed import gather_with_grad, per_sample_rand, step_rand, world_size
from msbreg.byol import BYOL, BYOLConfig
from msbreg.losses import (
    brownian_loss,
    centroid_to_centroid_loss,
    multiview_centroid_loss,
    singular_value_loss,
    uniformity_loss,
)

CENTROID_LOSSES = {"leave_one_out": multiview_centroid_loss, "centroid_to_centroid": centroid_to_centroid_loss}


@dataclass
class MSBRegConfig(BYOLConfig):
    """BYOL's fields, K views (``augment.num_views``) and the three terms; ``lambda_s = lambda_b = 0`` with K = 2
    is BYOL's loss (the "BYOL + L_b" rows of supplementary Table 4 set only ``lambda_b``)."""

    name: Literal["msbreg"] = "msbreg"  # MSBReg ("An Embedding-Dynamic Approach to Self-supervised Learning")
    lambda_s: NonNegativeFloat = 0.004  # singular value loss weight (best of supplementary Table 5 for K = 4 and 8)
    lambda_b: NonNegativeFloat = 0.5    # Brownian diffusive loss weight (best of supplementary Table 5)
    lambda_u: NonNegativeFloat = 0.0    # Wang & Isola uniformity loss weight: only the Table 3 baseline sets it
    uniformity_t: PositiveFloat = 2.0   # temperature t of the uniformity loss
    # Readings of the paper's words (its equations are in the unavailable main text); see msbreg/losses.py. The
    # defaults are those under which supplementary Table 4's MSBReg-LN row reproduces on Fashion-MNIST
    # (python -m msbreg.study.table4, README "MSBReg"; 3 seeds): with L_s centred, on raw or normalised
    # projections, MSBReg-LN nearly collapses (20-NN 0.557 / 0.567, proj_std 0.010 / 0.009: every projection
    # along one shared direction); uncentred on normalised ones it stays by MSBReg-BN (0.799 vs 0.812, proj_std
    # 0.086). Centroid to centroid learns little (0.598); no averaged L_b reading differs from another.
    centroid_loss: Literal["leave_one_out", "centroid_to_centroid"] = "leave_one_out"  # each prediction to the other views' target centroid | online centroid to target centroid
    singular_value_centred: bool = False  # L_s on the centred batch (covariance) or not (second moment); centred does not see a collapse
    singular_value_normalised: bool = True  # L_s on L2-normalised projections z/||z|| (true) or raw ones
    brownian_direction: Literal["per_sample", "per_image", "per_batch"] = "per_sample"  # every view of every image | shared by an image's K views | one for the step
    brownian_noise: Literal["sphere", "gaussian"] = "sphere"  # unit-norm directions | N(0, I), norm about sqrt(d): lambda_b x sqrt(d)
    brownian_reduction: Literal["mean", "sum"] = "mean"  # mean over the K x N rows of the global batch | sum over them (lambda_b x K N: a batch-size-free step per embedding)


def brownian_noise(num_views: int, batch: int, dim: int, direction: str, noise: str,
                   device: torch.device | None = None) -> Tensor:
    """The random directions xi of ``brownian_loss`` for K views of this rank's ``batch`` images: [K * batch, dim].

    Rows are view-major, like ``projections.flatten(0, 1)``. ``direction``: ``per_sample`` draws one per
    row; ``per_image`` one per image, the same for its K views; ``per_batch`` one for the whole step.
    ``noise``: ``gaussian`` keeps the N(0, I_d) draws (a Wiener increment), ``sphere`` normalises them to unit
    length (uniform on S^{d-1}). Drawn from the global RNG per sample of the global batch
    (``common.distributed.per_sample_rand``), so that image i gets the same xi on any number of processes.
    """
    if direction == "per_sample":
        xi = per_sample_rand(batch, dim, device=device, dtype=torch.float32, normal=True, groups=num_views)
    elif direction == "per_image":
        xi = per_sample_rand(batch, dim, device=device, dtype=torch.float32, normal=True).repeat(num_views, 1)
    elif direction == "per_batch":
        # One draw for the step (common.distributed.step_rand): the same direction on every rank and micro-batch.
        xi = step_rand(1, dim, device=device, dtype=torch.float32, normal=True).expand(num_views * batch, dim)
    else:
        raise ValueError(f"brownian direction must be per_sample, per_image or per_batch, not '{direction}'")
    if noise == "sphere":
        return F.normalize(xi, dim=-1)
    if noise == "gaussian":
        return xi
    raise ValueError(f"brownian noise must be sphere or gaussian, not '{noise}'")


class MSBReg(BYOL):
    """K views (``augment.num_views``), every view through the online and the target network.

    L_s and L_uniform are computed per view over the global batch (gathered across ranks with gradient) and
    averaged over the views; L_b is a per-sample force on every online projection of the rank, averaged (or,
    ``brownian_reduction=sum``, summed over the global batch), with its random directions drawn per sample of
    the global batch.
    Logged metrics: every loss term, the collapse monitor ``proj_std`` and ``ema_momentum``.
    """

    @property
    def couples_batch(self) -> bool:
        """L_s and L_uniform are statistics of the batch; L_b summed over it grows with it (the centroid loss and
        the averaged L_b are per image)."""
        return bool(self.cfg.lambda_s or self.cfg.lambda_u or (self.cfg.lambda_b and
                                                               self.cfg.brownian_reduction == "sum"))

    def embed(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        """BYOL's embeddings of the K views and, with L_b, its random directions ``xi`` [N, K, D]."""
        if len(views) < 2:
            raise ValueError(f"MSBReg needs at least 2 views, got {len(views)}")
        out = super().embed(views)
        cfg = self.cfg
        if cfg.lambda_b:
            batch, num_views, dim = out["projections"].shape
            xi = brownian_noise(num_views, batch, dim, cfg.brownian_direction, cfg.brownian_noise,
                                out["projections"].device)
            out["xi"] = xi.unflatten(0, (num_views, batch)).transpose(0, 1)
        return out

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], labels: Tensor | None) -> dict[str, Tensor]:
        cfg = self.cfg
        projections = embeddings["projections"].transpose(0, 1)  # [K, N, D], as the losses take them
        metrics = {"loss_mc": CENTROID_LOSSES[cfg.centroid_loss](embeddings["predictions"].transpose(0, 1),
                                                                 embeddings["targets"].transpose(0, 1))}
        loss = metrics["loss_mc"]
        if cfg.lambda_s:
            metrics["loss_s"] = torch.stack([
                singular_value_loss(gather_with_grad(z), cfg.singular_value_centred, cfg.singular_value_normalised)
                for z in projections]).mean()
            loss = loss + cfg.lambda_s * metrics["loss_s"]
        if cfg.lambda_b:
            num_views, batch, _ = projections.shape
            metrics["loss_b"] = brownian_loss(projections.flatten(0, 1), embeddings["xi"].transpose(0, 1).flatten(0, 1))
            if cfg.brownian_reduction == "sum":
                # mean x the global row count: the ranks' gradients, averaged, are those of the global sum
                metrics["loss_b"] = metrics["loss_b"] * (num_views * batch * world_size())
            loss = loss + cfg.lambda_b * metrics["loss_b"]
        if cfg.lambda_u:
            metrics["loss_uniform"] = torch.stack(
                [uniformity_loss(gather_with_grad(z), cfg.uniformity_t) for z in projections]).mean()
            loss = loss + cfg.lambda_u * metrics["loss_uniform"]
        metrics = {name: value.detach() for name, value in metrics.items()}
        return dict(loss=loss, features=embeddings["features"],
                    proj_std=self.collapse_monitor(embeddings["projections"]),
                    ema_momentum=torch.tensor(self.momentum), **metrics)
