"""Eigenvalue spectrum of the backbone features' covariance, and its participation ratio.

For features h (N x D) with covariance eigenvalues lambda_1 >= ... >= lambda_D:

    explained_k = lambda_k / sum_j lambda_j
    participation ratio = (sum_k lambda_k)^2 / sum_k lambda_k^2   (1 for one direction, D for isotropic)

Not one of the paper's figures: it shows how many directions a representation spreads over, which a cosine
k-NN depends on and a linear probe can re-weight (README, the Bernoulli's k-NN gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import RunFolderError
from common.plots import new_figure, save_figure
from stochcon.analysis.report import write_numbers


@dataclass
class FeatureSpectrum:
    explained: list[float]  # eigenvalues over their sum, largest first
    participation_ratio: float
    num_images: int


def feature_spectrum(features: np.ndarray) -> FeatureSpectrum:
    """The covariance spectrum of `features` [N, D] (population covariance, float64)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature spectrum: need features [N >= 2, D], got shape {tuple(features.shape)}")
    centred = features.astype(np.float64) - features.mean(0, dtype=np.float64)
    eigenvalues = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1], 0.0, None)
    total = eigenvalues.sum()
    if total <= 0:
        raise RunFolderError("feature spectrum: every feature is constant over the images")
    return FeatureSpectrum(
        explained=(eigenvalues / total).tolist(),
        participation_ratio=float(total**2 / (eigenvalues**2).sum()),
        num_images=len(features),
    )


def write_feature_spectrum_report(rows: dict[str, FeatureSpectrum], out_dir: str | Path) -> Path:
    """`spectrum.json` and `spectrum.png`: the cumulative share of the variance in the leading eigenvalues,
    one line per run."""
    out_dir = write_numbers(rows, out_dir, "spectrum")
    fig, ax = new_figure(figsize=(6.0, 4.0))
    for name, spectrum in rows.items():
        ranks = np.arange(1, len(spectrum.explained) + 1)
        cumulative = np.cumsum(spectrum.explained)
        ax.plot(ranks, cumulative, label=f"{name} (PR {spectrum.participation_ratio:.1f})")
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("number of leading eigenvalues")
    ax.set_ylabel("share of the feature variance they hold")
    ax.set_title("Spectrum of the backbone features (PR: participation ratio)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir / "spectrum.png")
