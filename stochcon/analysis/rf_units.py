"""Random-forest units (Figure 2 right): how many latent units a classifier needs.

Under stratified k-fold sampling (5 folds in the paper), on each fold's training part a random forest on
all units ranks them by impurity-based feature importance; a fresh forest on the top-k units is then
scored by the macro F1 (mean F1 over classes) on the held-out part. The curve is the mean over folds
for each k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.plots import new_figure, save_figure
from stochcon.analysis.report import write_numbers


@dataclass
class UnitCurve:
    unit_counts: list[int]
    f1_mean: list[float]  # mean over folds of the held-out macro F1, per unit count
    f1_std: list[float]
    importance: list[float]  # feature importance of every unit, averaged over folds
    units_within: int  # fewest units whose mean F1 is within `tolerance` of the best
    tolerance: float
    varying_units: int  # units that take more than one value over the examples (0: a constant code)


def random_forest_units(
    features: np.ndarray,
    labels: np.ndarray,
    unit_counts: Sequence[int],
    folds: int = 5,
    n_estimators: int = 100,
    tolerance: float = 0.01,
    seed: int = 0,
    n_jobs: int = 1,
) -> UnitCurve:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"random_forest_units: features must be [N, D] with N = len(labels), got "
            f"{features.shape} and {labels.shape}"
        )
    dim = features.shape[1]
    counts = sorted({int(k) for k in unit_counts})
    if not counts or counts[0] < 1 or counts[-1] > dim:
        raise ConfigError(f"--units must lie in [1, {dim}] (the code's width), got {list(unit_counts)}")

    def forest(fold: int) -> RandomForestClassifier:
        return RandomForestClassifier(n_estimators=n_estimators, random_state=seed + fold, n_jobs=n_jobs)

    scores = np.zeros((folds, len(counts)))
    importance = np.zeros(dim)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, held_out) in enumerate(splitter.split(features, labels)):
        ranking_forest = forest(fold).fit(features[train], labels[train])
        importance += ranking_forest.feature_importances_ / folds
        ranked = np.argsort(-ranking_forest.feature_importances_, kind="stable")
        for j, k in enumerate(counts):
            units = ranked[:k]
            model = forest(fold).fit(features[train][:, units], labels[train])
            predicted = model.predict(features[held_out][:, units])
            scores[fold, j] = f1_score(labels[held_out], predicted, average="macro")
    f1_mean = scores.mean(0)
    best = f1_mean.max()
    units_within = next(k for k, f1 in zip(counts, f1_mean) if f1 >= best - tolerance)
    varying = int((features != features[:1]).any(axis=0).sum())
    return UnitCurve(
        counts, f1_mean.tolist(), scores.std(0).tolist(), importance.tolist(), units_within, tolerance, varying
    )


def curve_label(name: str, curve: UnitCurve) -> str:
    """The legend entry of a run: how many units reach within the tolerance of its best F1, or that its code
    is constant (every count then scores the same, and "1 unit" would claim a unit that carries nothing)."""
    if curve.varying_units == 0:
        return f"{name} (constant code: no unit varies)"
    units = curve.units_within
    return f"{name} ({units} unit{'' if units == 1 else 's'} within {curve.tolerance:g} of its best F1)"


def rf_units_figure(curves: dict[str, UnitCurve]):
    """Mean held-out macro F1 vs number of units, one labelled line per run (`curve_label`)."""
    fig, ax = new_figure(figsize=(6.5, 3.8))
    for name, curve in curves.items():
        mean, std = np.array(curve.f1_mean), np.array(curve.f1_std)
        ax.plot(curve.unit_counts, mean, marker="o", label=curve_label(name, curve))
        ax.fill_between(curve.unit_counts, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of random-forest units")
    ax.set_ylabel("mean F1 over classes (held-out folds)")
    ax.set_title("Random-forest units")
    ax.legend(fontsize=7)
    return fig


def write_rf_units_report(curves: dict[str, UnitCurve], out_dir: str | Path) -> Path:
    """`rf_units.json` and `rf_units.png` (`rf_units_figure`)."""
    out_dir = write_numbers(curves, out_dir, "rf_units")
    return save_figure(rf_units_figure(curves), out_dir / "rf_units.png")
