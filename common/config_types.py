"""Value types for config fields that the loader checks when it reads them (``common.config``).

``epochs: PositiveInt = 100`` is an ``int`` that must be at least 1; a violation is a ``ConfigError`` naming
the key, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``low <= x`` (or ``low < x`` when ``low_open``) and ``x <= high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(low=1)]
NonNegativeInt = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0.0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(low=0.0)]
Fraction = Annotated[float, Range(low=0.0, high=1.0)]  # a share or a probability, in [0, 1]
