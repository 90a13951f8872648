"""Gradient starvation on two moons (Section 5.1, Figure 1): decision boundaries with and without VCReg.

A three-layer network (2 -> hidden -> hidden -> 2, ReLU) is trained full-batch with cross-entropy under
each regulariser: none, weight decay, dropout, BatchNorm, and VCReg after both hidden layers. Every
regulariser is run ``--runs`` times, each with a fresh sample of the moons and a fresh initialisation;
the predicted class-1 probabilities on a grid are averaged over the runs and drawn as one panel per
regulariser (the 0.5 contour is the averaged boundary), with one run's points shown. The JSON holds the
test accuracies and the boundary margin: the mean distance from the test points to the averaged
boundary, which a network suffering gradient starvation keeps small on one side.

    python -m vcreg.analysis.two_moons --output outputs/two_moons.json     # ~1 minute on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_moons
from torch import nn

from common.errors import ConfigError
from common.output_paths import check_output_file
from common.plots import new_figure, save_figure
from vcreg.layer import NORMALIZATIONS, VCReg

REGULARISERS = ("none", "weight_decay", "dropout", "batchnorm", "vcreg")
PLACEMENTS = ("blocks", "final")


@dataclass
class TwoMoonsConfig:
    samples: int = 300          # training points per run
    noise: float = 0.1
    hidden: int = 128
    steps: int = 1000           # full-batch Adam steps
    lr: float = 1e-3
    weight_decay: float = 1e-2  # the weight_decay regulariser (AdamW's decoupled decay)
    dropout: float = 0.3
    alpha: float = 1.28         # VCReg: the paper's strongest grid values
    beta: float = 0.16
    placement: str = "blocks"   # VCReg after both hidden layers (Appendix A), or "final": the last one only
    normalization: str = "algorithm1"  # or "batch_mean" (vcreg/layer.py)
    runs: int = 10
    grid: int = 200


def three_layer_net(regulariser: str, cfg: TwoMoonsConfig) -> nn.Sequential:
    def after_hidden(last: bool) -> list[nn.Module]:
        if regulariser == "dropout":
            return [nn.Dropout(cfg.dropout)]
        if regulariser == "batchnorm":
            return [nn.BatchNorm1d(cfg.hidden)]
        if regulariser == "vcreg" and (last or cfg.placement == "blocks"):
            return [VCReg(cfg.alpha, cfg.beta, normalization=cfg.normalization)]
        return []

    return nn.Sequential(nn.Linear(2, cfg.hidden), nn.ReLU(), *after_hidden(last=False),
                         nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), *after_hidden(last=True),
                         nn.Linear(cfg.hidden, 2))


def moons(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_moons(n, noise=noise, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def train_run(regulariser: str, cfg: TwoMoonsConfig, seed: int, grid_points: torch.Tensor) -> dict:
    if regulariser not in REGULARISERS:
        raise ConfigError(f"unknown regulariser {regulariser!r}; choose from {', '.join(REGULARISERS)}")
    if cfg.placement not in PLACEMENTS or cfg.normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown placement {cfg.placement!r} or normalization {cfg.normalization!r}; choose "
                          f"from {', '.join(PLACEMENTS)} and {', '.join(NORMALIZATIONS)}")
    x, y = moons(cfg.samples, cfg.noise, seed)
    x_test, y_test = moons(1000, cfg.noise, 10_000 + seed)
    torch.manual_seed(seed)
    net = three_layer_net(regulariser, cfg)
    decay = cfg.weight_decay if regulariser == "weight_decay" else 0.0
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=decay)
    net.train()
    for _ in range(cfg.steps):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        grid_probability = net(grid_points).softmax(1)[:, 1]
        test_accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
        train_accuracy = float((net(x).argmax(1) == y).float().mean())
    return {"grid_probability": grid_probability, "test_accuracy": test_accuracy, "train_accuracy": train_accuracy,
            "points": (x, y)}


def boundary_margin(probability: np.ndarray, xs: np.ndarray, ys: np.ndarray, points: np.ndarray) -> float:
    """Mean distance from ``points`` to the grid cells where the averaged prediction crosses 0.5."""
    above = probability >= 0.5
    edge = np.zeros_like(above)
    edge[:, 1:] |= above[:, 1:] != above[:, :-1]
    edge[1:, :] |= above[1:, :] != above[:-1, :]
    if not edge.any():
        return float("nan")
    gx, gy = np.meshgrid(xs, ys)
    boundary = np.stack([gx[edge], gy[edge]], axis=1)
    distances = np.sqrt(((points[:, None, :] - boundary[None, :, :]) ** 2).sum(-1)).min(1)
    return float(distances.mean())


def run(cfg: TwoMoonsConfig, regularisers: tuple[str, ...] = REGULARISERS) -> dict:
    xs = np.linspace(-1.6, 2.6, cfg.grid)
    ys = np.linspace(-1.1, 1.6, cfg.grid)
    gx, gy = np.meshgrid(xs, ys)
    grid_points = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    x_eval, _ = moons(2000, cfg.noise, 99_999)
    results: dict = {"config": asdict(cfg), "regularisers": {}}
    panels = {}
    for regulariser in regularisers:
        runs = [train_run(regulariser, cfg, seed, grid_points) for seed in range(cfg.runs)]
        probability = torch.stack([r["grid_probability"] for r in runs]).mean(0).view(cfg.grid, cfg.grid).numpy()
        test = [r["test_accuracy"] for r in runs]
        results["regularisers"][regulariser] = {
            "test_accuracy_mean": float(np.mean(test)), "test_accuracy_std": float(np.std(test)),
            "train_accuracy_mean": float(np.mean([r["train_accuracy"] for r in runs])),
            "boundary_margin": boundary_margin(probability, xs, ys, x_eval.numpy()),
        }
        panels[regulariser] = (probability, runs[0]["points"])
    results["_panels"] = (xs, ys, panels)
    return results


def plot(xs: np.ndarray, ys: np.ndarray, panels: dict, summary: dict, path: Path) -> None:
    fig, axes = new_figure(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (name, (probability, (x, y))) in zip(axes[0], panels.items()):
        ax.contourf(xs, ys, probability, levels=20, cmap="RdBu_r", alpha=0.6, vmin=0, vmax=1)
        ax.contour(xs, ys, probability, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=6, edgecolors="k", linewidths=0.2)
        stats = summary[name]
        ax.set_title(f"{name}\ntest {stats['test_accuracy_mean']:.3f}, margin {stats['boundary_margin']:.3f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Two moons decision boundaries with and without VCReg (Figure 1)")
    parser.add_argument("--output", type=Path, default=Path("outputs/two_moons.json"))
    for name, value in asdict(TwoMoonsConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            choices={"placement": PLACEMENTS, "normalization": NORMALIZATIONS}.get(name))
    parser.add_argument("--regularisers", nargs="+", default=list(REGULARISERS), choices=REGULARISERS)
    args = parser.parse_args(argv)
    try:  # before the work, not when its result cannot be written
        check_output_file(args.output, "--output", (".png",))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = TwoMoonsConfig(**{name: getattr(args, name) for name in asdict(TwoMoonsConfig())})
    torch.set_num_threads(1)
    results = run(cfg, tuple(args.regularisers))
    xs, ys, panels = results.pop("_panels")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    plot(xs, ys, panels, results["regularisers"], args.output.with_suffix(".png"))
    for name, stats in results["regularisers"].items():
        print(f"{name:<14} test {stats['test_accuracy_mean']:.3f} +- {stats['test_accuracy_std']:.3f}   "
              f"margin {stats['boundary_margin']:.3f}")
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
