"""Neural collapse and information compression of penultimate features (Section 5.2, Table 6).

- CDNV (eq. 8): ``V(S_i, S_j) = (Var(S_i) + Var(S_j)) / (2 ||mu_i - mu_j||^2)`` with ``Var(S)`` the mean
  squared distance of a class's features to their mean, averaged over all pairs of classes. Small values
  mean collapsed classes.
- NCC (eq. 9): accuracy of ``argmin_c ||f(x) - mu_c||`` with class centres from the training features.
- MINE (Belghazi et al., 2018): the Donsker-Varadhan lower bound ``I(X; Z) >= E_P[T] - log E_{P x P}[e^T]``
  between the input images and their features, maximised over a small statistics network ``T``, in bits.

    python -m vcreg.analysis.collapse --runs runs/fmnist_supervised runs/fmnist_vcreg --output collapse.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from common.augment import build_eval_transform
from common.backbones import load_backbone
from common.config import load_config
from common.data import build_dataset, dataset_info, stratified_subset
from common.plots import new_figure, save_figure
from evaluation.features import extract_features, is_in_memory
from evaluation.labelled import train_test_features


def class_means(features: Tensor, labels: Tensor, num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-class means ``[K, D]`` and the classes present (sorted)."""
    classes = torch.unique(labels) if num_classes is None else torch.arange(num_classes)
    means = torch.stack([features[labels == c].mean(0) for c in classes])
    return means, classes


def cdnv(features: Tensor, labels: Tensor) -> float:
    """Eq. 8 averaged over all pairs of distinct classes present in ``labels``."""
    features = features.double()
    means, classes = class_means(features, labels)
    if len(classes) < 2:
        raise ValueError(f"CDNV needs at least 2 classes, got {len(classes)}")
    variances = torch.stack([(features[labels == c] - m).pow(2).sum(1).mean() for c, m in zip(classes, means)])
    distances = torch.cdist(means, means).pow(2)
    i, j = torch.triu_indices(len(classes), len(classes), offset=1)
    return float(((variances[i] + variances[j]) / (2 * distances[i, j])).mean())


def ncc_accuracy(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor) -> float:
    """Eq. 9: the fraction of ``features`` whose nearest training class centre is their class."""
    means, classes = class_means(train_features.double(), train_labels)
    predicted = classes[torch.cdist(features.double(), means).argmin(1)]
    return float((predicted == labels).double().mean())


class StatisticsNetwork(nn.Module):
    """MINE's ``T(x, z)``: an MLP on the concatenated (flattened) input and features."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim + z_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x, z], dim=1)).squeeze(1)


def donsker_varadhan(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """``E_P[T] - log E_{P x P}[e^T]`` in nats."""
    return t_joint.mean() - (torch.logsumexp(t_marginal, 0) - math.log(t_marginal.numel()))


def mine_bits(x: Tensor, z: Tensor, steps: int = 2000, batch_size: int = 512, lr: float = 1e-4,
              ema: float = 0.01, seed: int = 0) -> float:
    """MINE estimate of ``I(X; Z)`` in bits: trained on 80 % of the pairs, evaluated on the other 20 %.

    The gradient of ``log E[e^T]`` is bias-corrected with a moving average of ``E[e^T]`` (Belghazi et al.,
    Section 3.2). Inputs and features are standardised per dimension first.
    """
    generator = torch.Generator().manual_seed(seed)
    x = x.flatten(1).float()
    z = z.flatten(1).float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    z = (z - z.mean(0)) / (z.std(0) + 1e-6)
    order = torch.randperm(len(x), generator=generator)
    split = int(0.8 * len(x))
    train, held_out = order[:split], order[split:]
    torch.manual_seed(seed)
    network = StatisticsNetwork(x.shape[1], z.shape[1])
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    moving = None
    for _ in range(steps):
        idx = train[torch.randint(len(train), (batch_size,), generator=generator)]
        shuffled = train[torch.randint(len(train), (batch_size,), generator=generator)]
        t_joint, t_marginal = network(x[idx], z[idx]), network(x[idx], z[shuffled])
        exp_mean = torch.exp(t_marginal).mean()
        moving = exp_mean.detach() if moving is None else (1 - ema) * moving + ema * exp_mean.detach()
        # bias-corrected surrogate: its gradient is grad E[T] - grad E[e^T] / moving average of E[e^T]
        loss = -(t_joint.mean() - exp_mean / moving)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        permuted = held_out[torch.randperm(len(held_out), generator=generator)]
        bound = donsker_varadhan(network(x[held_out], z[held_out]), network(x[held_out], z[permuted]))
    return max(float(bound), 0.0) / math.log(2)


def collapse_metrics(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> dict[str, float]:
    """CDNV and NCC accuracy on the training features (where collapse is defined), NCC also on the test set."""
    (train_x, train_y), (test_x, test_y) = train, test
    return {"cdnv": cdnv(train_x, train_y), "ncc_top1": ncc_accuracy(train_x, train_y, train_x, train_y),
            "ncc_top1_test": ncc_accuracy(train_x, train_y, test_x, test_y)}


def analyse_run(run: Path, mine_images: int, mine_steps: int, device: torch.device) -> dict:
    from vcreg.train import VCRegTrainConfig  # vcreg.train imports this module

    cfg = load_config(VCRegTrainConfig, ["--config", str(run / "config.yaml")])
    backbone, _ = load_backbone(run)
    backbone.to(device).eval()
    features = train_test_features(backbone, cfg.data, cfg.backbone.in_chans, cfg.augment.image_size,
                                   cfg.eval.batch_size, cfg.eval.max_train_images, device)
    result = {"run": str(run), **collapse_metrics(features[:2], features[2:])}
    if mine_images > 0:
        dataset = build_dataset(cfg.data, "train")
        if not is_in_memory(dataset):
            raise ValueError(f"MINE reads raw images of in-memory datasets; '{cfg.data.name}' is not one "
                             "(use --mine-images 0)")
        indices = torch.tensor(stratified_subset(dataset.targets, min(mine_images, len(dataset))))
        info = dataset_info(cfg.data)
        transform = build_eval_transform(info, cfg.backbone.in_chans or info.channels, cfg.augment.image_size)
        z, _ = extract_features(backbone, dataset, transform, cfg.eval.batch_size, device, cfg.data.num_workers,
                                indices)
        result["mutual_information_bits"] = mine_bits(dataset.images[indices].float() / 255, z, steps=mine_steps)
    return result


def plot(results: list[dict], path: Path) -> None:
    keys = [k for k in ("cdnv", "ncc_top1", "mutual_information_bits") if k in results[0]]
    fig, axes = new_figure(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    names = [Path(r["run"]).name for r in results]
    for ax, key in zip(axes[0], keys):
        ax.bar(names, [r[key] for r in results], color=[f"C{i}" for i in range(len(results))])
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=20, labelsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CDNV, NCC accuracy and MINE mutual information of trained runs")
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="run folders of vcreg/train.py")
    parser.add_argument("--mine-images", type=int, default=5000, help="training images for MINE (0: skip MINE)")
    parser.add_argument("--mine-steps", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("collapse.json"))
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            print(f"error: '{run}' is not a run folder (no config.yaml)", file=sys.stderr)
            return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = [analyse_run(run, args.mine_images, args.mine_steps, device) for run in args.runs]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    for r in results:
        print(json.dumps(r))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
