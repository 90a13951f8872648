"""Multi-view helpers every joint-embedding method needs: backbone features and projections of a list of views.

Views of one resolution can go through a network as one batch (batch-norm statistics over all of them, as
SimCLR's code concatenates its views) or one call each (statistics per view, as lightly's and solo-learn's
examples; faster on CPUs).
"""

from __future__ import annotations

import torch
from torch import nn


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
