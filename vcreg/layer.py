"""The fast VCReg layer: identity forward, regulariser gradient added in backward (Algorithm 1, Appendix B).

Features are rows of ``d`` channels: a ``[N, C, H, W]`` map gives ``n = N*H*W`` rows of ``d = C`` channels
(every spatial location is a sample, Section 3.2) and a ``[N, L, C]`` token sequence gives ``n = N*L`` rows.
With ``X`` the rows centred over the samples and ``C = X^T X / (n - 1)``, backward returns

    grad_output - alpha / (d (n - 1)) * X * w  +  4 beta / (d (d - 1)) * X offdiag(C),

where ``w_i = rsqrt(C_ii + eps)`` if that exceeds 1 and 0 otherwise (Algorithm 1's ``F.threshold``).
The first term is exactly ``alpha * grad(l_var)`` (eq. 3). The second is ``beta * (n - 1) * grad(l_cov)``
(eq. 4): Algorithm 1 leaves out the ``1/(n - 1)`` of ``dC/dX``, and the paper's alpha and beta were tuned
with that scaling, so we keep it (``vcreg.naive`` spells out the equivalent loss). With ``delta`` set, the
covariance penalty is the smooth-L1 of eq. 7, whose gradient clamps ``offdiag(C)`` to ``[-delta, delta]``.

Centring happens inside backward instead of in a forward "mean removal" layer (Appendix A): the gradient
of the regulariser of centred features already has zero mean over the samples, so it is the same gradient
with respect to the uncentred input, and the forward pass stays an exact identity.

Statistics are per rank: under data parallelism every process regularises the covariance of its own
shard (``n`` counts local rows), and DDP averages the per-rank gradients. ``all_reduce=True`` sums the
mean and covariance over ranks, so the regulariser is that of the global batch; the added gradient is
then multiplied by the world size, because DDP divides the summed gradients by it and the global-batch
regulariser (unlike a per-rank mean of losses) must not be divided.

Mixed precision: statistics are computed in at least float32 whatever the input dtype. Under fp16 with a gradient
scaler, ``grad_output`` arrives multiplied by the loss scale, so the added gradient must be too: attach
the scaler with :func:`attach_grad_scaler` (the layer then reads its current scale on the device, without
a host sync). bf16 needs no scaler and nothing to attach.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from common import distributed


def channels_last_view(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, H, W, C]``; token ``[N, L, C]`` and vector ``[N, C]`` inputs are returned as is."""
    return x.movedim(1, -1) if x.dim() == 4 else x


def statistics_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision features (their squared sums overflow fp16), else the input's dtype."""
    return torch.promote_types(x.dtype, torch.float32)


def _centred(features: Tensor, sample_dims: tuple[int, ...], all_reduce: bool) -> tuple[Tensor, int, int]:
    """``features`` minus its mean over ``sample_dims`` (over all ranks with ``all_reduce``); n and world size."""
    d = features.shape[1]
    n_local = features.numel() // d
    if all_reduce and distributed.is_distributed():
        world = distributed.world_size()
        stats = torch.cat([features.sum(sample_dims), features.new_tensor([n_local])])
        dist.all_reduce(stats)
        n = int(stats[-1].item())
        shape = [d if i == 1 else 1 for i in range(features.dim())]
        return features - (stats[:-1] / n).view(shape), n, world
    return features - features.mean(sample_dims, keepdim=True), n_local, 1


class VCRegFunction(torch.autograd.Function):
    """Identity whose backward adds Algorithm 1's variance-covariance gradient (see the module docstring).

    The rows are never materialised in a new layout: a contiguous ``[N, C, H, W]`` map is read as
    ``[N, C, H*W]`` (covariance ``sum_N X X^T``, added gradient ``M^T X`` fused with the add of
    ``grad_output``), and a channels-last map, a ``[N, L, C]`` sequence or ``[N, C]`` vectors as ``[n, C]`` rows.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float, beta: float, eps: float, delta: float | None,
                all_reduce: bool, loss_scale: Callable[[], Tensor | float]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.hyper = (alpha, beta, eps, delta, all_reduce, loss_scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        alpha, beta, eps, delta, all_reduce, loss_scale = ctx.hyper
        channel_first = x.dim() == 4 and x.is_contiguous()
        dtype = statistics_dtype(x)
        if channel_first:
            features, sample_dims = x.flatten(2).to(dtype), (0, 2)                  # [N, C, H*W]
        else:
            rows = channels_last_view(x)                                            # a view when channels last
            features, sample_dims = rows.reshape(-1, rows.shape[-1]).to(dtype), (0,)  # [n, C]
        centred, n, world = _centred(features, sample_dims, all_reduce)
        d = centred.shape[1]
        if n < 2 or d < 2:
            raise ValueError(f"VCReg needs at least 2 samples and 2 channels, got n={n}, d={d}")
        gram = (centred @ centred.mT).sum(0) if channel_first else centred.T @ centred
        cov = gram / (n - 1)
        if all_reduce and world > 1:
            dist.all_reduce(cov)  # local sums over (n_global - 1) add up to the global covariance
        variance_weight = torch.rsqrt(cov.diagonal() + eps)
        variance_weight = torch.where(variance_weight > 1.0, variance_weight, torch.zeros_like(variance_weight))
        off_diagonal = cov if delta is None else cov.clamp(-delta, delta)
        # One (d, d) matrix carries both terms, so the added gradient costs a single n x d x d product.
        mixing = off_diagonal * (4.0 * beta / (d * (d - 1)))
        mixing.diagonal().copy_(variance_weight * (-alpha / (d * (n - 1))))
        mixing = mixing * (world * loss_scale())
        if channel_first:  # grad[k] + M^T X[k] for every image k, one fused kernel when the dtypes agree
            grad = grad_output.flatten(2)
            if grad.dtype == dtype:
                grad_input = torch.baddbmm(grad, mixing.T.expand(x.shape[0], d, d), centred)
            else:
                grad_input = grad + (mixing.T @ centred).to(grad.dtype)
            grad_input = grad_input.view_as(grad_output)
        else:
            grad_rows = channels_last_view(grad_output)
            grad_input = grad_rows + (centred @ mixing).view(grad_rows.shape).to(grad_output.dtype)
            if x.dim() == 4:
                grad_input = grad_input.movedim(-1, 1)
        return grad_input, None, None, None, None, None, None


class VCReg(nn.Module):
    """Variance-covariance regularisation layer: forward is the identity, backward adds the gradient.

    Args:
        alpha: weight of the variance hinge (eq. 3).
        beta: weight of the covariance penalty, in Algorithm 1's scaling (see the module docstring).
        eps: added to the variances before the square root.
        delta: smooth-L1 threshold of eq. 7 for the covariance penalty; ``None`` is the squared penalty.
        all_reduce: compute the statistics over all ranks instead of per rank.
    """

    def __init__(self, alpha: float, beta: float, eps: float = 1e-5, delta: float | None = None,
                 all_reduce: bool = False) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"VCReg alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if delta is not None and delta <= 0:
            raise ValueError(f"VCReg delta must be > 0 or None, got {delta}")
        self.alpha, self.beta, self.eps, self.delta, self.all_reduce = alpha, beta, eps, delta, all_reduce
        self.grad_scaler: torch.amp.GradScaler | None = None

    def loss_scale(self) -> Tensor | float:
        """The scale the current backward's ``grad_output`` carries (1 without an enabled fp16 scaler).

        Read during backward, after ``scaler.scale(loss)`` has created the scale tensor.
        """
        if self.grad_scaler is None or not self.grad_scaler.is_enabled():
            return 1.0
        scale = self.grad_scaler._get_scale_async()  # device tensor: reading it does not sync the host
        return self.grad_scaler.get_scale() if scale is None else scale

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return x
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"VCReg expects [N, C], [N, L, C] or [N, C, H, W] features, got shape {tuple(x.shape)}")
        if (self.grad_scaler is None and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == torch.float16):
            raise ValueError("VCReg under fp16 autocast needs the loss scale: call "
                             "vcreg.attach_grad_scaler(model, accelerator.scaler) (a disabled GradScaler if unscaled)")
        return VCRegFunction.apply(x, self.alpha, self.beta, self.eps, self.delta, self.all_reduce,
                                   self.loss_scale)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, delta={self.delta}, "
                f"all_reduce={self.all_reduce}")


def attach_grad_scaler(model: nn.Module, scaler: torch.amp.GradScaler | None) -> int:
    """Give every VCReg layer in ``model`` the fp16 gradient scaler (``accelerator.scaler``); returns the count.

    Call once after the scaler exists; the layers read its current scale at every backward. ``None`` detaches.
    """
    layers = [m for m in model.modules() if isinstance(m, VCReg)]
    for layer in layers:
        layer.grad_scaler = scaler
    return len(layers)
