"""Countable metrics of the binary code (Section 4.3, Figure 4): active bits over a dataset.

For a code b in {0, 1}^D per example, the active-bit count is sum_d b_d; Figure 4 plots its mean over
the training and test sets as training progresses (about D/2 at the start, falling during training; a
capacity-restricted 512-unit model keeps using half of its units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.plots import new_figure, save_figure
from stochcon.analysis.report import write_numbers


@dataclass
class BitStats:
    latent_dim: int
    mean_active: float  # mean over examples of the number of ones
    std_active: float
    active_fraction: float  # mean_active / latent_dim
    dead_units: int  # units that are 0 on every example
    constant_on_units: int  # units that are 1 on every example


def bit_stats(bits: np.ndarray) -> BitStats:
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"bit_stats: bits must be [N, D], got shape {bits.shape}")
    if not np.isin(bits, (0, 1)).all():
        raise ValueError("bit_stats: the code must hold exactly 0 and 1 (hard Bernoulli variates)")
    counts = bits.sum(1).astype(np.float64)
    per_unit = bits.mean(0)
    dim = bits.shape[1]
    return BitStats(
        dim,
        float(counts.mean()),
        float(counts.std()),
        float(counts.mean() / dim),
        int((per_unit == 0).sum()),
        int((per_unit == 1).sum()),
    )


def epoch_of_step(step: int, train_size: int, batch_size: int) -> float:
    """Epochs of training done after `step` optimiser steps. The trainer drops every epoch's last incomplete
    batch (`common.batches.BatchStream`), so an epoch is train_size // batch_size steps, not train_size / batch."""
    steps_per_epoch = train_size // batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"a training set of {train_size} images holds no batch of {batch_size}")
    return step / steps_per_epoch


@dataclass
class BitCountCurve:
    """Bit statistics of one run at successive points of training: initialisation (step 0), then one entry
    per saved checkpoint."""

    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    train: list[BitStats] = field(default_factory=list)
    test: list[BitStats] = field(default_factory=list)


def bit_count_figure(curves: dict[str, BitCountCurve]):
    """Mean active bits vs epoch on train (left) and test (right), one labelled line per run."""
    fig, axes = new_figure(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for name, curve in curves.items():
            stats = getattr(curve, split)
            ax.plot(
                curve.epochs,
                [s.mean_active for s in stats],
                marker="o",
                label=f"{name} (D={stats[0].latent_dim})" if stats else name,
            )
        ax.set_xlabel("epoch (0: initialisation)")
        ax.set_xlim(left=0)
        ax.set_title(f"{split} set")
    axes[0].set_ylabel("mean number of active bits")
    axes[1].legend(fontsize=8)
    fig.suptitle("Average bit counts of the Bernoulli code")
    return fig


def write_bit_count_report(curves: dict[str, BitCountCurve], out_dir: str | Path) -> Path:
    """`bit_counts.json` and `bit_counts.png` (`bit_count_figure`)."""
    out_dir = write_numbers(curves, out_dir, "bit_counts")
    return save_figure(bit_count_figure(curves), out_dir / "bit_counts.png")
