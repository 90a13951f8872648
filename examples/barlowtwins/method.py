"""Barlow Twins: backbone, projector, and the loss of the two views' cross-correlation over the global batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from common.config_types import PositiveFloat
from common.distributed import gather_with_grad
from common.dtypes import at_least_float32
from common.errors import ConfigError
from common.heads import head
from common.method import Method
from common.views import encode_views, project
from examples.barlowtwins.losses import barlow_twins_loss


@dataclass
class BarlowTwinsConfig:
    name: Literal["barlow_twins"] = "barlow_twins"  # the method
    projector: list[int] = field(default_factory=lambda: [8192, 8192, 8192])  # hidden..., output (Section 4)
    lambda_offdiag: PositiveFloat = 5e-3  # weight of the redundancy-reduction term (Eq. 1; Section 4)


class BarlowTwins(Method):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: BarlowTwinsConfig):
        super().__init__(backbone, feature_dim)
        self.projector = head(feature_dim, cfg.projector, "method.projector", norm="bn")
        self.cfg = cfg

    couples_batch = True  # the cross-correlation is a statistic of the batch

    def embed(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """``z`` [N, 2, D], the projections of both views, and the detached backbone ``features`` of view 0."""
        if len(views) != 2:
            raise ConfigError(f"Barlow Twins takes 2 views (augment.num_views=2), got {len(views)}")
        features = encode_views(self.backbone, views)
        z = [at_least_float32(z) for z in project(self.projector, features)]
        return {"z": torch.stack(z, dim=1), "features": features[0].detach()}

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        z1, z2 = (gather_with_grad(z) for z in embeddings["z"].unbind(1))
        return {"loss": barlow_twins_loss(z1, z2, self.cfg.lambda_offdiag), "features": embeddings["features"]}
