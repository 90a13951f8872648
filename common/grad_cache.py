"""Gradient caching: accumulated micro-batches that compute the loss of the whole batch.

With ``grad_accum_steps = K``, plain accumulation computes each micro-batch's loss on its own: an InfoNCE sees
B / K negatives instead of B, VICReg's and Barlow Twins' statistics come from B / K samples. Following Gao et
al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (2021, Section 3), a method whose
loss couples its batch (``Method.couples_batch``) is split in two (``Method.embed`` and
``Method.loss_from_embeddings``), and each optimiser step runs:

1. pass 1, without gradients: every micro-batch's per-sample embeddings;
2. the loss of the whole batch from the concatenated embeddings (gathered across processes by the method, as
   in ``forward``) and its gradient with respect to the embeddings, once;
3. pass 2: every micro-batch again, with gradients, backpropagating its slice of the cached gradient.

The parameter gradient is then that of the whole-batch loss: the chain rule splits it over the samples, and
pass 2 recomputes each sample's embedding exactly. What makes the recomputation exact: each micro-batch
reseeds the global RNG with the same seed before both passes (dropout), per-sample noise comes from
``common.distributed.step_noise`` (Gumbel noise, Gaussian draws, Brownian directions: the noise the
unaccumulated step draws for that sample), and every buffer is put back after pass 1, so batch-norm running
statistics move once per micro-batch, as with plain accumulation. An EMA target runs without gradient in both
passes. What stays per micro-batch, as on one device of a data-parallel run without SyncBN: batch-norm batch
statistics, and the statistics of layers that add their own gradient in backward (VCReg layers, whose
``BackwardScale`` still divides by K). The online probe's loss is per sample; it rides on pass 2 with weight
1 / K. Under fp16 the loss is multiplied by the grad scaler's scale before its gradient is taken, so every
gradient carries the scale the plain path's scaled loss gives it.

Cost: one more forward pass per micro-batch (about a third more compute than plain accumulation for a network
whose backward costs two forwards), and the embeddings of the whole batch in memory; activations stay those of
one micro-batch (``bench/grad_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from common.distributed import step_noise
from common.method import Method


def concatenate(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The embeddings of micro-batches as those of one batch: every entry concatenated along dim 0."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def cached_accumulation(
    module: nn.Module,
    method: Method,
    micro_views: list[list[torch.Tensor]],
    micro_labels: list[torch.Tensor],
    reseed: Callable[[int], None],
    noise_seed: int,
    restore_buffers: Callable[[], None],
    finite: Callable[[torch.Tensor, dict], bool],
    sync_context: Callable[[bool], AbstractContextManager] = lambda last: nullcontext(),
    loss_context: Callable[[], AbstractContextManager] = nullcontext,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Accumulate into the parameters' ``.grad`` the gradient of the whole batch's loss, micro-batch by micro-batch.

    ``module(views, labels, cached=True)`` returns ``{"embeddings": method.embed(views, labels), ...}`` plus the
    online probe's ``probe_loss`` and ``probe_acc`` (``common.trainer.TrainingModule``; DDP-wrapped or not);
    ``method`` is the unwrapped method, whose ``loss_from_embeddings`` takes the whole batch. ``reseed(micro)``
    seeds the global RNG before each pass over micro-batch ``micro``; ``noise_seed`` seeds the per-sample noise
    of the whole step (``common.distributed.step_noise``). ``restore_buffers()`` puts every buffer back to its
    value at the start of the step. ``finite(loss, out)`` says whether a loss is finite on every process (it may
    raise instead). ``sync_context(last)``: DDP's ``no_sync`` for all but the last micro-batch's pass 2;
    ``loss_context()``: the autocast the method's forward runs in; ``scale(loss)``: the fp16 grad scaler's
    ``scale``. Returns the loss's dict (probe metrics averaged over the micro-batches) and False, with
    gradients partly accumulated, where a loss was not finite: the caller then drops the step.
    """
    count = len(micro_views)
    parts = []
    with torch.no_grad():
        for micro, (views, labels) in enumerate(zip(micro_views, micro_labels)):
            reseed(micro)
            with step_noise(noise_seed, micro, count):
                parts.append(module(views, labels, cached=True)["embeddings"])
    restore_buffers()  # pass 2 moves the batch-norm running statistics, once per micro-batch

    leaves = {key: value.detach().requires_grad_(value.is_floating_point())
              for key, value in concatenate(parts).items()}
    del parts
    with loss_context():
        out = method.loss_from_embeddings(leaves, torch.cat(micro_labels))
    if not finite(out["loss"], out):
        return out, False
    wanted = [key for key, value in leaves.items() if value.requires_grad]
    grads = torch.autograd.grad(scale(out["loss"]), [leaves[key] for key in wanted], allow_unused=True)
    sizes = [len(labels) for labels in micro_labels]
    cached = {key: grad.split(sizes) for key, grad in zip(wanted, grads) if grad is not None}
    out = {key: value.detach() if torch.is_tensor(value) else value for key, value in out.items()}
    del leaves, grads

    probe: dict[str, list[torch.Tensor]] = {}
    for micro, (views, labels) in enumerate(zip(micro_views, micro_labels)):
        reseed(micro)
        with step_noise(noise_seed, micro, count), sync_context(micro == count - 1):
            part = module(views, labels, cached=True)
            embeddings = part.pop("embeddings")
            tensors = [embeddings[key] for key in cached if embeddings[key].requires_grad]
            grad_tensors = [cached[key][micro] for key in cached if embeddings[key].requires_grad]
            if "probe_loss" in part:
                if not finite(part["probe_loss"], part):
                    return {**out, **part}, False
                tensors.append(scale(part["probe_loss"] / count))
                grad_tensors.append(None)
            if tensors:
                torch.autograd.backward(tensors, grad_tensors)
        for key, value in part.items():
            if torch.is_tensor(value) and value.numel() == 1:
                probe.setdefault(key, []).append(value.detach())
    out.update({key: torch.stack(values).mean() for key, values in probe.items()})
    return out, True
