"""Precision helpers: statistics and losses computed in at least float32, whatever autocast produced."""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if autocast made it bf16/fp16; float32 and float64 (a numerical check) unchanged."""
    return x.float() if x.dtype in LOW_PRECISION else x
