"""SimCLR (Chen et al., 2020): backbone f, projector g, InfoNCE between the views of each image."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from common.heads import mlp
from common.method import Method
from stochcon.latents import StochConConfig
from stochcon.losses import multicrop_info_nce


@dataclass
class SimCLRConfig:
    name: str = "simclr"           # simclr | stochcon | supervised (Appendix A.2 control); latent under `stochcon`
    temperature: float = 0.1       # InfoNCE tau (SimCLR: 0.1 at batch 4096 on ImageNet, 0.5 on CIFAR-10)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    proj_hidden_layers: int = 1    # SimCLR v1: one hidden layer; v2: two
    proj_norm: str = "bn"          # bn | ln | none, in the projector's hidden layers
    gather_negatives: bool = True  # negatives from every GPU (the global batch), as in the paper
    # One backbone and projector call over all views (batch-norm statistics over the 2N images, as SimCLR's
    # code concatenates them); false: one call per view, statistics per view (lightly's and solo-learn's
    # examples), about 20% faster on a CPU (bench/method_overhead.py).
    views_together: bool = True
    stochcon: StochConConfig = field(default_factory=StochConConfig)


def projector(cfg: SimCLRConfig, feature_dim: int) -> nn.Sequential:
    return mlp(feature_dim, [cfg.proj_hidden_dim] * cfg.proj_hidden_layers, cfg.proj_output_dim, norm=cfg.proj_norm)


def encode_views(backbone: nn.Module, views: list[torch.Tensor], together: bool = True) -> list[torch.Tensor]:
    """Backbone features of every view; with ``together``, views of one resolution go through the network as one
    batch, else one call per view."""
    if not together:
        return [backbone(view) for view in views]
    features: list[torch.Tensor | None] = [None] * len(views)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, view in enumerate(views):
        by_size.setdefault(tuple(view.shape[1:]), []).append(index)
    for indices in by_size.values():
        out = backbone(torch.cat([views[i] for i in indices]))
        for i, chunk in zip(indices, out.chunk(len(indices))):
            features[i] = chunk
    return features


def project(projector: nn.Module, inputs: list[torch.Tensor], together: bool = True) -> list[torch.Tensor]:
    """Projector outputs of equally shaped inputs: one call over all of them with ``together``, else one each."""
    if not together:
        return [projector(x) for x in inputs]
    return list(projector(torch.cat(inputs)).chunk(len(inputs)))


class SimCLR(Method):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SimCLRConfig, num_global_views: int):
        super().__init__(backbone, feature_dim)
        self.cfg = cfg
        self.num_global_views = num_global_views
        self.projector = projector(cfg, feature_dim)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = encode_views(self.backbone, views, self.cfg.views_together)
        projections = project(self.projector, features, self.cfg.views_together)
        loss = multicrop_info_nce(projections, self.num_global_views, self.cfg.temperature,
                                  self.cfg.gather_negatives)
        return {"loss": loss, "features": features[0].detach()}
