"""What chance would score, for thresholds of "learns" tests that follow from a probability, not a guess."""

from __future__ import annotations

from math import comb


def binomial_upper_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance that a classifier right with probability p per image,
    independently, gets at least k of n test images right."""
    return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def accuracy_beyond_chance(n: int, classes: int, level: float = 1e-6) -> float:
    """The smallest accuracy (a fraction of ``n``) that guessing among ``classes`` reaches with probability
    below ``level``: a test that asserts at least this much fails for a chance-level model with a probability
    under ``level``."""
    for k in range(n + 1):
        if binomial_upper_tail(n, 1 / classes, k) < level:
            return k / n
    raise ValueError(f"no accuracy of {n} images is below chance level {level}")
