"""What the trainer does to every gradient, for modules that add a gradient of their own in backward.

The trainer backpropagates ``loss / accumulation_steps`` for each of ``accumulation_steps`` micro-batches,
multiplied by the fp16 grad scaler's current scale when one is enabled, and DDP then averages parameter
gradients over ``world_size`` processes. A module whose backward adds its own gradient (a VCReg layer) must
apply the same factors to stay consistent with the loss. With gradient caching (``common.grad_cache``) the
micro-batches backpropagate slices of the whole batch's loss gradient instead, already scaled by the grad
scaler, and such a module's own term is still that of its micro-batch: it keeps dividing by
``accumulation_steps``, as under plain accumulation. It declares an attribute ``backward_scale`` (None
until the trainer sets it) and the trainer hands it the run's ``BackwardScale`` with
``attach_backward_scale`` once, after building the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BackwardScale:
    grad_scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling; None or disabled: scale 1
    accumulation_steps: int = 1  # the trainer divides each micro-batch's loss by this
    world_size: int = 1  # DDP averages parameter gradients over this many processes

    def loss_scale(self) -> torch.Tensor | float:
        """The factor the grad scaler multiplies every gradient by now: a device tensor (reading it does not
        synchronise the host) for an enabled scaler, else 1.0."""
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return 1.0
        scale = scaler._get_scale_async()  # None before the first scaled backward
        return scaler.get_scale() if scale is None else scale


def attach_backward_scale(root: nn.Module, scale: BackwardScale | None) -> int:
    """Give ``scale`` to every submodule of ``root`` that declares ``backward_scale``; returns how many."""
    count = 0
    for module in root.modules():
        if hasattr(module, "backward_scale"):
            module.backward_scale = scale
            count += 1
    return count
