"""The naive VCReg layer: compute the regulariser as a loss in forward and let autograd differentiate it.

It is the reference for the fast layer (``vcreg.layer``) and the "VCReg (Naive)" column of Table 1. The
loss is eq. 2 on the centred rows (every spatial location or token a sample) with weights ``alpha`` and
``beta * (n - 1)`` under Algorithm 1 as printed (its covariance gradient omits the ``1/(n - 1)`` of
``dC/dX``) or ``alpha`` and ``beta`` under ``batch_mean`` (eqs. 3-4 as written): each reading's own loss,
whose gradient is the fast layer's on one micro-batch of one process (no accumulation, scale 1), to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vcreg.layer import NORMALIZATIONS, channels_last_view, statistics_dtype
from vcreg.losses import vcreg_loss


def naive_vcreg_loss(x: Tensor, alpha: float, beta: float, eps: float = 1e-5, delta: float | None = None,
                     normalization: str = "algorithm1") -> Tensor:
    """The loss whose gradient with respect to ``x`` equals the fast layer's added gradient."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}")
    rows = channels_last_view(x)
    rows = rows.reshape(-1, rows.shape[-1]).to(statistics_dtype(x))
    covariance_weight = beta * (rows.shape[0] - 1) if normalization == "algorithm1" else beta
    return vcreg_loss(rows, alpha, covariance_weight, eps, delta)


class NaiveVCReg(nn.Module):
    """Identity in forward that records ``naive_vcreg_loss`` of its input in ``self.loss`` while training."""

    def __init__(self, alpha: float, beta: float, eps: float = 1e-5, delta: float | None = None) -> None:
        super().__init__()
        self.alpha, self.beta, self.eps, self.delta = alpha, beta, eps, delta
        self.loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled() and x.requires_grad:
            self.loss = naive_vcreg_loss(x, self.alpha, self.beta, self.eps, self.delta)
        return x

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, delta={self.delta}"


def pop_naive_losses(model: nn.Module) -> Tensor:
    """Sum and clear the losses every ``NaiveVCReg`` in ``model`` recorded in the last forward pass."""
    total = torch.zeros(())
    for module in model.modules():
        if isinstance(module, NaiveVCReg) and module.loss is not None:
            total = total.to(module.loss.device) + module.loss
            module.loss = None
    return total
