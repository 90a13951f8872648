"""The online linear probe: a linear classifier trained on detached backbone features during training.

Its gradient never reaches the backbone (the features are detached), so it monitors representation
quality at almost no cost, as in solo-learn. Unlabelled samples (label -1) are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OnlineProbe(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(features.detach().to(self.classifier.weight.dtype))
        labelled = labels >= 0
        if not bool(labelled.any()):
            zero = logits.sum() * 0.0  # keeps every parameter in the graph for DDP
            # same keys on every rank: the logged metrics are averaged across ranks
            return {"probe_loss": zero, "probe_acc": zero.detach()}
        loss = F.cross_entropy(logits[labelled], labels[labelled])
        accuracy = (logits[labelled].argmax(dim=1) == labels[labelled]).float().mean()
        return {"probe_loss": loss, "probe_acc": accuracy.detach()}
