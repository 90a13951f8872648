"""Value types for config fields that the loader checks when it reads them (``common.config``).

``epochs: PositiveInt = 100`` is an ``int`` that must be at least 1; a violation is a ``ConfigError`` naming
the key, before anything runs. ``Annotated[list[X], Length(low=1)]`` bounds how many items a list holds. Every
``float`` is finite (``nan`` and ``inf`` are refused by the loader for any float field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``low <= x`` (or ``low < x`` when ``low_open``) and ``x <= high`` (or ``x < high``
    when ``high_open``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Length:
    """How many items a list may hold: ``low <= len(x)`` and ``len(x) <= high``."""

    low: int = 0
    high: int | None = None

    def check(self, value: list) -> bool:
        return len(value) >= self.low and (self.high is None or len(value) <= self.high)

    def describe(self) -> str:
        if self.high == self.low:
            return f"of {self.low} values"
        if self.high is None:
            return f"of at least {self.low} value{'s' if self.low != 1 else ''}"
        return f"of {self.low} to {self.high} values"


PositiveInt = Annotated[int, Range(low=1)]
NonNegativeInt = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0.0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(low=0.0)]
Fraction = Annotated[float, Range(low=0.0, high=1.0)]  # a share or a probability, in [0, 1]
UnitInterval = Annotated[float, Range(low=0.0, high=1.0, high_open=True)]  # in [0, 1): a decay rate (Adam's betas)
# an MLP head's hidden widths, then its output width (``method.projector``): at least the output
Widths = Annotated[list[PositiveInt], Length(low=1)]
