"""Distributed helpers in one place: world/rank, all-gather with gradient, differentiable sums, SyncBN.

Losses that need the global batch (InfoNCE negatives, the singular value loss) gather with
``gather_with_grad``. Its backward returns, to each rank, the gradient of the *global* loss with respect
to that rank's own inputs: the gradients arriving at every rank's copy of the gathered tensor are summed
across ranks and the rank's slice is kept. Because DDP then averages parameter gradients over the ranks,
a loss that every rank computes identically on the gathered batch gets exactly the single-process
gradient. No raw ``all_reduce`` of a loss statistic is used anywhere: it would silently drop or scale the
gradient by the world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start:start + ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, rank order; identity on one process.

    Every rank must pass the same shape. The gradient of a loss computed identically on every rank
    flows back to each rank's own rows (see the module docstring for why the scaling is exact).
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (features for evaluation, metrics)."""
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def per_sample_rand(local_batch: int, *shape: int, device=None, dtype=None, normal: bool = False) -> torch.Tensor:
    """Random numbers for this rank's rows of the global batch: ``[local_batch, *shape]``.

    Every rank draws the whole global batch's numbers from the (identically seeded) global RNG and keeps
    its own slice, so sample ``i`` gets the same noise for any number of processes.
    """
    draw = torch.randn if normal else torch.rand
    everything = draw(local_batch * world_size(), *shape, device=device, dtype=dtype)
    start = rank() * local_batch
    return everything[start:start + local_batch]


class _AllReduceMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / dist.get_world_size()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        # Every rank holds the same mean and computes the same downstream loss from it; the global
        # gradient of that loss w.r.t. this rank's term is the sum of the ranks' upstream gradients / W.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / dist.get_world_size()


def all_reduce_mean_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks with the exact gradient of a loss every rank computes identically."""
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    return _AllReduceMean.apply(tensor)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm layers synchronised across ranks (no-op on one process)."""
    if not is_distributed() or dist.get_world_size() == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
