"""Aggregate variance of the Gaussian latent (Figure 3 right).

For q(z|x) = N(mu(x), diag(sigma^2(x))), the aggregate posterior q(z) = E_x q(z|x) has, per unit d, the
variance Var[z_d] = E_x[sigma_d^2(x)] + Var_x[mu_d(x)] (law of total variance). We report, averaged over
units: the posterior (noise) part E_x[sigma^2], the signal part Var_x[mu], their sum, and the noise share
E_x[sigma^2] / (E_x[sigma^2] + Var_x[mu]) -- a scale-free measure of how much the model relies on the
stochasticity (Section 4.2: more as the bottleneck shrinks; ~0 when the variance collapses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.plots import new_figure, save_figure
from stochcon.analysis.report import write_numbers


@dataclass
class AggregateVariance:
    latent_dim: int
    posterior_variance: float  # E_x[sigma^2(x)], mean over units
    variance_of_means: float  # Var_x[mu(x)], mean over units
    aggregate_variance: float  # the sum: variance of the aggregate posterior, mean over units
    noise_share: float  # posterior_variance / aggregate_variance
    setting: str = ""  # what the run is apart from its width (e.g. where the scale comes from): one line each


def aggregate_variance(mu: np.ndarray, sigma: np.ndarray) -> AggregateVariance:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.shape != sigma.shape or mu.ndim != 2:
        raise ValueError(
            f"aggregate_variance: mu and sigma must both be [N, D], got {mu.shape} and {sigma.shape}"
        )
    if (sigma < 0).any():
        raise ValueError("aggregate_variance: sigma must be non-negative")
    posterior = float((sigma**2).mean())
    signal = float(mu.var(axis=0).mean())
    total = posterior + signal
    return AggregateVariance(mu.shape[1], posterior, signal, total, posterior / total if total > 0 else 0.0)


def aggregate_variance_figure(rows: dict[str, AggregateVariance]):
    """Both variance parts (left) and the noise share (right) vs bottleneck dimension: one labelled line per
    setting (the opposing-view runs and the own-variance ablation apart), its runs in order of width."""
    settings: dict[str, list[AggregateVariance]] = {}
    for row in rows.values():
        settings.setdefault(row.setting, []).append(row)
    fig, (left, right) = new_figure(1, 2, figsize=(10, 3.8))
    for index, (setting, group) in enumerate(settings.items()):
        ordered = sorted(group, key=lambda row: row.latent_dim)
        dims = [row.latent_dim for row in ordered]
        color, name = f"C{index}", setting or "runs"
        left.plot(dims, [row.posterior_variance for row in ordered], marker="o", color=color,
                  label=f"{name}: E_x[sigma^2]")
        left.plot(dims, [row.variance_of_means for row in ordered], marker="s", linestyle="--", color=color,
                  label=f"{name}: Var_x[mu]")
        right.plot(dims, [row.noise_share for row in ordered], marker="o", color=color, label=name)
    left.set_yscale("log")
    left.set_ylabel("variance (mean over units)")
    right.set_ylim(0, 1)
    right.set_ylabel("noise share of the aggregate variance")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bottleneck dimension")
        ax.legend(fontsize=7)
    fig.suptitle("Aggregate variance of the Gaussian latent (test set)")
    return fig


def write_aggregate_variance_report(rows: dict[str, AggregateVariance], out_dir: str | Path) -> Path:
    """`aggregate_variance.json` and `aggregate_variance.png` (`aggregate_variance_figure`)."""
    out_dir = write_numbers(rows, out_dir, "aggregate_variance")
    return save_figure(aggregate_variance_figure(rows), out_dir / "aggregate_variance.png")
