"""Which samples of a sharded split each rank and DataLoader worker reads in an epoch, and in which order.

The epoch's sequence: the shards in a permutation seeded by ``(seed, epoch)``, each shard's samples in a
permutation seeded by ``(seed, epoch, shard)`` (both in stored order when not shuffling). Rank ``r`` reads
positions ``[r * P, (r + 1) * P)`` of that sequence, cut into batches of ``batch_size``: a contiguous stretch,
so each rank opens only its own shards (and at most two it shares with a neighbour). ``P`` is
``num_batches * batch_size``, the same on every rank; without ``num_batches`` the ranks split every sample
(evaluation) and the last batch may be short.

With ``W`` DataLoader workers, logical worker ``w`` owns a contiguous block of the rank's batches (the first
``C % W`` blocks one batch longer) and reads its shards in sequence. The DataLoader asks its workers in turn,
so the rank's ``p``-th batch is the ``p // W``-th batch of logical worker ``p % W``. The order thus depends on
``W``, but every rank and worker count reads each sample of ``[0, world * P)`` exactly once. A resume at batch
``s`` restarts every logical worker after the batches it had served before ``s`` and gives DataLoader worker
``i`` the logical worker ``(i + s) % W``, whose batch comes next: the resumed stream is the tail of the
uninterrupted one (same ``W``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SHARD_ORDER, _SAMPLE_ORDER = 0x5A4D, 0x5A4E  # tags that keep the two permutations' seeds apart


@dataclass(frozen=True)
class EpochPlan:
    """Where one rank's stream of one epoch starts and how it is cut."""

    epoch: int
    seed: int
    batch_size: int
    rank: int = 0
    world: int = 1
    num_batches: int | None = None  # per rank; None: every sample, split over the ranks, last batch short
    start_batch: int = 0  # batches of this epoch already consumed (resume)
    num_workers: int = 0
    shuffle: bool = True


def _permutation(size: int, *seed: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed)))).permutation(size)


def shard_order(num_shards: int, plan: EpochPlan) -> np.ndarray:
    if not plan.shuffle:
        return np.arange(num_shards)
    return _permutation(num_shards, plan.seed, plan.epoch, _SHARD_ORDER)


def sample_order(count: int, shard: int, plan: EpochPlan) -> np.ndarray:
    """The order of the ``count`` samples of shard ``shard`` (its index in the split, not in the epoch)."""
    if not plan.shuffle:
        return np.arange(count)
    return _permutation(count, plan.seed, plan.epoch, _SAMPLE_ORDER, shard)


def rank_range(num_samples: int, plan: EpochPlan) -> tuple[int, int]:
    """The positions ``[first, end)`` of the epoch's sequence that rank ``plan.rank`` reads."""
    if plan.num_batches is None:
        return plan.rank * num_samples // plan.world, (plan.rank + 1) * num_samples // plan.world
    per_rank = plan.num_batches * plan.batch_size
    if per_rank * plan.world > num_samples:
        raise ValueError(f"{plan.world} ranks x {plan.num_batches} batches x {plan.batch_size} samples is more "
                         f"than the {num_samples} samples of the split")
    return plan.rank * per_rank, (plan.rank + 1) * per_rank


def worker_batches(num_batches: int, num_workers: int, worker: int) -> range:
    """The rank's batches (numbered in sequence order) that logical worker ``worker`` of ``num_workers`` owns."""
    base, extra = divmod(num_batches, num_workers)
    first = worker * base + min(worker, extra)
    return range(first, first + base + (worker < extra))


def served_before(start_batch: int, num_workers: int, worker: int) -> int:
    """How many of its batches logical worker ``worker`` had served when the rank had received ``start_batch``."""
    return start_batch // num_workers + (worker < start_batch % num_workers)


def worker_stretches(num_samples: int, plan: EpochPlan, loader_worker: int) -> list[tuple[int, int]]:
    """The batches DataLoader worker ``loader_worker`` yields, in order, as ``[first, end)`` position ranges of
    the epoch's sequence (``loader_worker`` 0 when loading happens in the main process)."""
    workers = max(plan.num_workers, 1)
    first, end = rank_range(num_samples, plan)
    num_batches = -(-(end - first) // plan.batch_size)
    if plan.start_batch > num_batches:
        raise ValueError(f"start_batch {plan.start_batch} is past the {num_batches} batches of the epoch")
    worker = (loader_worker + plan.start_batch) % workers
    owned = worker_batches(num_batches, workers, worker)
    return [(first + b * plan.batch_size, min(first + (b + 1) * plan.batch_size, end))
            for b in owned[served_before(plan.start_batch, workers, worker):]]
