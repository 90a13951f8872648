"""Schedules as pure functions of the optimiser step.

Every function maps ``step`` (0-based, counted in optimiser steps) to a value; the trainer sets the
learning rate from them at every step, methods use them for temperatures and EMA momenta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def cosine_anneal(step: int, total_steps: int, start: float, end: float) -> float:
    """Single-cycle cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held after).

    value = end + (start - end) * (1 + cos(pi * t)) / 2 with t = min(step / total_steps, 1).
    Used for the Gumbel temperature of StochCon (1.0 -> 0.1) and for the decay part of ``warmup_cosine``.
    """
    if total_steps <= 0:
        return end
    t = min(max(step, 0) / total_steps, 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_value: float, final_value: float = 0.0,
                  start_value: float = 0.0) -> float:
    """Linear warm-up from ``start_value`` to ``base_value`` over ``warmup_steps``, then cosine to ``final_value``.

    Goyal et al. (2017) warm-up followed by a cosine decay without restarts (SimCLR, BYOL, MSBReg).
    """
    if step < warmup_steps:
        return start_value + (base_value - start_value) * step / warmup_steps
    return cosine_anneal(step - warmup_steps, total_steps - warmup_steps, base_value, final_value)


def step_decay(step: int, milestones: Sequence[int], base_value: float, gamma: float = 0.1) -> float:
    """Piecewise constant: ``base_value * gamma ** (number of milestones <= step)``."""
    return base_value * gamma ** sum(1 for milestone in milestones if step >= milestone)


def ema_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's target momentum: 1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2, from base to 1."""
    return cosine_anneal(step, total_steps, base, 1.0)
