"""The interface between a self-supervised (or supervised) method and the training loop.

The loop knows nothing about any method: it hands the augmented views and the labels to
``forward``, steps the optimiser on ``loss``, logs every other scalar of the returned dict, feeds
``features`` to the online linear probe, and calls the two hooks around each optimiser step.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import nn


class FeatureSplits(NamedTuple):
    """Frozen backbone features (eval mode, no augmentation) of the evaluation's train and test images."""

    train_x: torch.Tensor  # [N, feature_dim]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor


class Method(nn.Module, abc.ABC):
    """Base class: a backbone plus whatever heads and losses the method needs."""

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    @abc.abstractmethod
    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, "features": detached backbone features of views[0], **metrics}``."""

    def on_step_start(self, step: int, total_steps: int) -> None:
        """Before the forward pass of optimiser step ``step``: set the method's own schedules."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimiser step: e.g. the EMA update of a target network."""

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """The method's own figures for ``results.json`` at the end of training, computed in eval mode from the
        features the final evaluation extracted once (a classifier's ``test_top1``, a latent's code
        statistics, neural-collapse measures); none by default."""
        return {}
