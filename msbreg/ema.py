"""The target network of BYOL / MSBReg: a frozen copy of the online network, moved by an EMA of its weights.

The momentum follows ``common.schedules.ema_momentum`` (BYOL's cosine from the base value to 1); this file
only holds the copy and the update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters do not require gradients (the trainer skips them)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (Grill et al. 2020, eq. 1).

    Buffers (batch-norm running statistics) are copied from the online network: the target runs in training
    mode with batch statistics, the copied running statistics only matter if someone evaluates the target.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError(f"EMA target has {len(target_params)} parameters but the online network has "
                         f"{len(online_params)}: they must have the same architecture")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)
