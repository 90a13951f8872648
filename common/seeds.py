"""Seeds derived from positions, so that a run's randomness does not depend on how it was split or resumed.

``derive_seed(seed, *position, STREAM)`` gives an independent 63-bit seed for each position of each random
stream; the stream tags below keep the streams apart (the data order of epoch 3 never shares a seed with the
noise of step 3).
"""

from __future__ import annotations

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1

DATA_ORDER = 0xDA7A  # the per-epoch permutation of the training set
MICRO_BATCH_RNG = 0x5EED  # the global RNG at each micro-batch (latent noise, Brownian directions, dropout)
# the global RNG at each micro-batch of a gradient-cached step (dropout); its per-sample noise is drawn from the
# step's MICRO_BATCH_RNG seed of micro-batch 0 (common.distributed.step_noise), that of the unaccumulated step
GRAD_CACHE_RNG = 0xCAC4E


def derive_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value and on their order."""
    seed = 0
    for value in values:
        seed = ((seed ^ (int(value) & _MASK)) * _MIX + 0x632BE59BD9B4E019) & _MASK
        seed ^= seed >> 29
    return seed
