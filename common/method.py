"""The interface between a self-supervised (or supervised) method and the training loop.

The loop knows nothing about any method: it hands the augmented views and the labels to
``forward``, steps the optimiser on ``loss``, logs every other scalar of the returned dict, feeds
``features`` to the online linear probe, and calls the two hooks around each optimiser step. A method whose
loss couples the samples of a batch (``couples_batch``) also splits ``forward`` into ``embed`` and
``loss_from_embeddings``, so that accumulated micro-batches compute the whole batch's loss (``common.grad_cache``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class FeatureSplits(NamedTuple):
    """Frozen backbone features (eval mode, no augmentation) of the evaluation's train and test images."""

    train_x: torch.Tensor  # [N, feature_dim]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class ParameterGroup:
    """Parameters a method asks the optimiser to treat alike (solo-learn's ``learnable_params`` are one model).

    ``common.optim.param_groups`` splits each group further into weights and biases/norm parameters."""

    name: str  # for messages and the optimiser's group ("backbone_and_heads", "predictor")
    params: list[nn.Parameter]
    # The learning rate stays at the peak every step: no warm-up, no decay (SimSiam's predictor, Chen & He 2021,
    # "Exploring Simple Siamese Representation Learning": a constant predictor lr works better than a decayed one).
    fixed_lr: bool = False


class Method(nn.Module, abc.ABC):
    """Base class: a backbone plus whatever heads and losses the method needs."""

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    # True where the loss couples the samples of a batch (negatives, batch statistics, centroids over the batch):
    # then accumulated micro-batches would each see a smaller batch, and the trainer caches gradients instead
    # (common.grad_cache), which needs ``embed`` and ``loss_from_embeddings``. A method whose loss is a mean of
    # per-sample terms needs neither and only implements ``forward``.
    couples_batch: bool = False

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, "features": detached backbone features of views[0], **metrics}``; by
        default ``loss_from_embeddings(embed(views, labels), labels)``."""
        return self.loss_from_embeddings(self.embed(views, labels), labels)

    def embed(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the loss needs, per sample: ``{name: [N, ...]}`` with dim 0 the micro-batch's samples
        (projections, predictions, an EMA target's outputs computed without gradient, noise draws), and
        ``features``, the detached backbone features of views[0]. Random draws per sample come from
        ``common.distributed.per_sample_rand`` (one draw for the batch: ``step_rand``), so that gradient caching
        draws what the whole batch draws. Required where ``couples_batch``."""
        raise NotImplementedError(f"{type(self).__name__} couples its batch but has no embed()")

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward``'s dict from the embeddings of a whole batch: ``embed``'s outputs of its micro-batches
        concatenated along dim 0 (on each process; gather across processes as ``forward`` does) and their
        labels. Required where ``couples_batch``."""
        raise NotImplementedError(f"{type(self).__name__} couples its batch but has no loss_from_embeddings()")

    def on_step_start(self, step: int, total_steps: int) -> None:
        """Before the forward pass of optimiser step ``step``: set the method's own schedules."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimiser step: e.g. the EMA update of a target network."""

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """The method's own figures for ``results.json`` at the end of training, computed in eval mode from the
        features the final evaluation extracted once (a classifier's ``test_top1``, a latent's code
        statistics, neural-collapse measures); none by default."""
        return {}

    def parameter_groups(self) -> list[ParameterGroup]:
        """The groups the optimiser sees: every parameter with ``requires_grad`` in exactly one (an EMA target's
        are frozen); one group on the schedule by default."""
        return [ParameterGroup("backbone_and_heads", [p for p in self.parameters() if p.requires_grad])]
