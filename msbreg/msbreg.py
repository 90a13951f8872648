"""MSBReg: BYOL with K views, a multiview centroid loss, a singular value loss and a Brownian diffusive loss.

Total loss (this project's reading of the paper, issue 4):
    L = L_mc + lambda_s * L_s + lambda_b * L_b (+ lambda_u * L_uniform, the "BYOL + L_uniform" baseline of
    supplementary Table 3; 0 in MSBReg itself)
Every term is a pure function in ``msbreg.losses``; this module only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.distributed import gather_with_grad, per_sample_rand
from msbreg.byol import BYOL, BYOLConfig
from msbreg.losses import brownian_loss, multiview_centroid_loss, singular_value_loss, uniformity_loss


@dataclass
class MSBRegConfig(BYOLConfig):
    lambda_s: float = 0.004   # singular value loss weight (best of supplementary Table 5 for K = 4 and 8)
    lambda_b: float = 0.5     # Brownian diffusive loss weight (best of supplementary Table 5)
    lambda_u: float = 0.0     # Wang & Isola uniformity loss weight: only the Table 3 baseline sets it
    uniformity_t: float = 2.0  # temperature t of the uniformity loss


class MSBReg(BYOL):
    """K views (``augment.num_views``), every view through the online and the target network.

    Built as ``MSBReg(MSBRegConfig(...), backbone, feature_dim)``, like ``BYOL``.

    L_s and L_uniform are computed per view over the global batch (gathered across ranks with gradient) and
    averaged over the views; L_b is a per-sample force, averaged over every online projection of the rank,
    with its random directions drawn per sample of the global batch.
    Logged metrics: every loss term, the collapse monitor ``proj_std`` and ``ema_momentum``.
    """

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if len(views) < 2:
            raise ValueError(f"MSBReg needs at least 2 views, got {len(views)}: set augment.num_views >= 2")
        cfg = self.cfg
        out = self.embed(views)
        projections = out["projections"]
        metrics = {"loss_mc": multiview_centroid_loss(out["predictions"], out["targets"])}
        loss = metrics["loss_mc"]
        if cfg.lambda_s:
            metrics["loss_s"] = torch.stack([singular_value_loss(gather_with_grad(z)) for z in projections]).mean()
            loss = loss + cfg.lambda_s * metrics["loss_s"]
        if cfg.lambda_b:
            # xi per sample of the global batch (each view's rows sliced per rank): the same draws on any
            # number of processes; on one process the same as brownian_loss's own draw
            num_views, batch, dim = projections.shape
            xi = per_sample_rand(batch, dim, device=projections.device, dtype=torch.float32, normal=True,
                                 groups=num_views)
            metrics["loss_b"] = brownian_loss(projections.flatten(0, 1), xi=xi)
            loss = loss + cfg.lambda_b * metrics["loss_b"]
        if cfg.lambda_u:
            metrics["loss_uniform"] = torch.stack(
                [uniformity_loss(gather_with_grad(z), cfg.uniformity_t) for z in projections]).mean()
            loss = loss + cfg.lambda_u * metrics["loss_uniform"]
        metrics = {name: value.detach() for name, value in metrics.items()}
        return dict(loss=loss, features=out["features"], proj_std=self.collapse_monitor(projections),
                    ema_momentum=torch.tensor(self.momentum), **metrics)
