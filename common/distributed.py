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

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from common.errors import ConfigError


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


class _StepNoise:
    """The noise stream of one micro-batch inside ``step_noise``: one generator per device, all seeded alike."""

    def __init__(self, seed: int, micro: int, micro_batches: int):
        self.seed, self.micro, self.micro_batches = seed, micro, micro_batches
        self.generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device) -> torch.Generator:
        device = torch.device(device if device is not None else "cpu")
        if device not in self.generators:
            self.generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self.generators[device]


_step_noise: _StepNoise | None = None


@contextmanager
def step_noise(seed: int, micro: int, micro_batches: int):
    """Within, ``per_sample_rand`` and ``step_rand`` draw the noise of the whole optimiser step.

    ``per_sample_rand`` draws the numbers of all ``micro_batches`` micro-batches of every rank (micro-batch
    major, then rank, as ``common.batches`` lays out a step's samples) from a generator seeded with ``seed``
    and keeps the rows of micro-batch ``micro`` of this rank. With ``seed`` the global RNG's seed of the
    unaccumulated step, every sample gets the noise it gets there, whatever the number of micro-batches and
    processes; gradient caching (``common.grad_cache``) relies on it.
    """
    global _step_noise
    previous, _step_noise = _step_noise, _StepNoise(seed, micro, micro_batches)
    try:
        yield
    finally:
        _step_noise = previous


def per_sample_rand(local_batch: int, *shape: int, device=None, dtype=None, normal: bool = False,
                    groups: int = 1) -> torch.Tensor:
    """Random numbers for this rank's rows of the global batch: ``[groups * local_batch, *shape]``.

    Every rank draws the whole global batch's numbers from the (identically seeded) global RNG and keeps
    its own slice, so sample ``i`` gets the same noise for any number of processes. ``groups``: the rows
    are that many batches one after the other (views concatenated along dim 0), each sliced per rank;
    on one process the draw equals ``draw(groups * local_batch, *shape)``. Inside ``step_noise``, the draw
    covers every micro-batch of the step and comes from its generator.
    """
    draw = torch.randn if normal else torch.rand
    noise, blocks, block = _step_noise, world_size(), rank()
    generator = None
    if noise is not None:
        generator = noise.generator(device)
        blocks, block = noise.micro_batches * world_size(), noise.micro * world_size() + rank()
    everything = draw(groups, local_batch * blocks, *shape, device=device, dtype=dtype, generator=generator)
    start = block * local_batch
    return everything[:, start:start + local_batch].reshape(groups * local_batch, *shape)


def step_rand(*shape: int, device=None, dtype=None, normal: bool = False) -> torch.Tensor:
    """One draw for the whole step, the same on every rank (and, inside ``step_noise``, every micro-batch)."""
    draw = torch.randn if normal else torch.rand
    generator = _step_noise.generator(device) if _step_noise is not None else None
    return draw(*shape, device=device, dtype=dtype, generator=generator)


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


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with the statistics of the global batch, on any device: PyTorch's ``SyncBatchNorm``
    refuses CPU modules, so multi-process CPU runs (gloo) use this one. Same parameters and buffers as
    ``nn.BatchNorm*d``; the statistics are summed over ranks with ``all_reduce_mean_with_grad``, whose
    backward makes every rank's gradient that of the global batch (as ``SyncBatchNorm``'s does)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = int(count.item())
        per_sample = dist.get_world_size() / n  # the mean over ranks of the sums, times W / n: a global mean
        mean = all_reduce_mean_with_grad(x.sum(dims)) * per_sample
        centred = x - mean.view(shape)
        var = all_reduce_mean_with_grad(centred.pow(2).sum(dims)) * per_sample
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(converted, name, tensor)  # the same objects: requires_grad (a frozen EMA target) is kept
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _to_global_batchnorm(child))
    return module


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm layers synchronised across ranks (no-op on one process): PyTorch's ``SyncBatchNorm`` on
    accelerators (nccl), ``GlobalBatchNorm`` under gloo, where ``SyncBatchNorm`` does not run."""
    if not is_distributed() or dist.get_world_size() == 1:
        return model
    if dist.get_backend() == "gloo":
        return _to_global_batchnorm(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_launch(num_processes: int) -> None:
    """``accelerate launch --cpu --num_processes N`` (N > 1) starts a single process in Accelerate 1.x (several
    CPU processes need MPI there); the launcher then still sets the rendezvous address. Refuse to run one
    process where several were asked, and give the command that works."""
    launched_one = (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ
                    and "WORLD_SIZE" not in os.environ)
    if launched_one and num_processes == 1:
        raise ConfigError("accelerate launch --cpu started 1 process where several were asked (Accelerate runs "
                          "several CPU processes only through MPI); use: ACCELERATE_USE_CPU=true accelerate "
                          "launch --multi_gpu --num_processes N <script> ...")
