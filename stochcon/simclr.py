"""SimCLR (Chen et al., 2020): backbone f, projector g, InfoNCE between the views of each image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from common.config_types import PositiveFloat, Widths
from common.heads import head, widths_from_old_keys
from common.info_nce import multicrop_info_nce
from common.method import Method
from common.views import encode_views, project


@dataclass
class SimCLRConfig:
    name: Literal["simclr"] = "simclr"  # SimCLR (Chen et al. 2020), the baseline StochCon builds on
    temperature: PositiveFloat = 0.1  # InfoNCE tau (SimCLR: 0.1 at batch 4096 on ImageNet, 0.5 on CIFAR-10)
    # the projector g: hidden widths..., output (the contrasted embedding); SimCLR v1: one hidden layer, v2: two
    projector: Widths = field(default_factory=lambda: [2048, 128])
    projector_norm: Literal["bn", "ln", "none"] = "bn"  # normalisation in the projector's hidden layers
    gather_negatives: bool = True  # negatives from every GPU (the global batch), as in the paper
    # One backbone and projector call over all views (batch-norm statistics over the 2N images, as SimCLR's
    # code concatenates them); false: one call per view, statistics per view (lightly's and solo-learn's
    # examples), about 20% faster on a CPU (bench/method_overhead.py).
    views_together: bool = True

    @staticmethod
    def upgrade_keys(values: dict) -> dict:
        """A section written before the one head vocabulary (an older run's config.yaml or YAML file):
        proj_hidden_dim x proj_hidden_layers and proj_output_dim become ``projector``, proj_norm ``projector_norm``."""
        values = widths_from_old_keys(values, ("proj_hidden_dim", "proj_output_dim", "proj_hidden_layers"),
                                      "projector", (2048, 128, 1))
        if "proj_norm" in values:
            values = {**{k: v for k, v in values.items() if k != "proj_norm"}, "projector_norm": values["proj_norm"]}
        return values


def projector(cfg: SimCLRConfig, feature_dim: int) -> nn.Sequential:
    return head(feature_dim, cfg.projector, "method.projector", norm=cfg.projector_norm)


class SimCLR(Method):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SimCLRConfig, num_global_views: int):
        super().__init__(backbone, feature_dim)
        self.cfg = cfg
        self.num_global_views = num_global_views
        self.projector = projector(cfg, feature_dim)

    couples_batch = True  # InfoNCE's negatives are the batch's other images

    def embed(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``projections`` [N, views, D] and the detached backbone ``features`` of views[0]."""
        features = encode_views(self.backbone, views, self.cfg.views_together)
        projections = project(self.projector, features, self.cfg.views_together)
        return {"projections": torch.stack(projections, dim=1), "features": features[0].detach()}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = multicrop_info_nce(list(embeddings["projections"].unbind(1)), self.num_global_views,
                                  self.cfg.temperature, self.cfg.gather_negatives)
        return {"loss": loss, "features": embeddings["features"]}
