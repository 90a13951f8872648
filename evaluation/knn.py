"""Weighted k-nearest-neighbour classification of frozen features (Wu et al., 2018, "instance discrimination").

For a query q and the L2-normalised bank features f_j with labels y_j:
    s_j   = <q / |q|, f_j / |f_j|>                     (cosine similarity)
    N_k   = indices of the k largest s_j
    score_c = sum_{j in N_k, y_j = c} exp(s_j / T)
    prediction = argmax_c score_c
Defaults k=200, T=0.1 (also reported with k=20), as in MSBReg's supplement section 2.3.

The work is one matrix product and one ``topk`` per chunk of queries, and a ``scatter_add`` for the vote,
so a 1.28M-image bank and 50k queries fit in memory: a chunk of queries holds at most
``max_chunk_elements`` similarities, and a bank larger than that is scanned in slices whose top-k are merged.

Command line: ``python -m evaluation.knn --checkpoint PATH [data.name=... k=200 temperature=0.1 ...]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from common.data import DataConfig
from evaluation.cli import labelled_features, run_protocol

# Similarities held at once per chunk (float32: 64M elements = 256 MiB).
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 26


def _check_inputs(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int,
                  temperature: float) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(f"k-NN features must be 2-D [N, D]; got train {tuple(train_features.shape)} "
                         f"and test {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"k-NN feature dimensions differ: train {train_features.shape[1]}, "
                         f"test {test_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"k-NN train_labels must have shape [{train_features.shape[0]}], "
                         f"got {tuple(train_labels.shape)}")
    if train_labels.numel() and int(train_labels.min()) < 0:
        raise ValueError("k-NN train_labels contain negative (unlabelled) entries; the bank must be labelled")
    if k < 1:
        raise ValueError(f"k-NN k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"k-NN temperature must be > 0, got {temperature}")


def _top_k_neighbours(queries: Tensor, bank: Tensor, k: int, bank_chunk: int) -> tuple[Tensor, Tensor]:
    """Similarities and indices of the k nearest bank rows for each (normalised) query row."""
    if bank_chunk >= bank.shape[0]:
        return torch.topk(queries @ bank.T, k, dim=1)
    best_sims, best_idx = None, None
    for start in range(0, bank.shape[0], bank_chunk):
        part = bank[start:start + bank_chunk]
        sims, idx = torch.topk(queries @ part.T, min(k, part.shape[0]), dim=1)
        idx += start
        if best_sims is not None:
            sims = torch.cat([best_sims, sims], dim=1)
            idx = torch.cat([best_idx, idx], dim=1)
            sims, order = torch.topk(sims, k, dim=1)
            idx = torch.gather(idx, 1, order)
        best_sims, best_idx = sims, idx
    return best_sims, best_idx


def knn_class_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int = 200,
                     temperature: float = 0.1, num_classes: int | None = None,
                     chunk_size: int | None = None,
                     max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> Tensor:
    """Class scores ``[num_test, num_classes]`` of the weighted k-NN vote (see the module docstring).

    Computation happens on ``train_features.device`` in its dtype. ``chunk_size`` is the number of queries
    per matrix product; by default as many as keep ``chunk_size * num_train <= max_chunk_elements``. When even
    one query row against the whole bank exceeds ``max_chunk_elements``, the bank is scanned in slices.
    """
    _check_inputs(train_features, train_labels, test_features, k, temperature)
    num_train = train_features.shape[0]
    k = min(k, num_train)
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1 if num_train else 0
    device, dtype = train_features.device, train_features.dtype
    bank = F.normalize(train_features, dim=1)
    bank_labels = train_labels.to(device=device, dtype=torch.long)
    if chunk_size is None:
        chunk_size = max(1, max_chunk_elements // max(num_train, 1))
    bank_chunk = max(k, max_chunk_elements // chunk_size)
    scores = torch.zeros(test_features.shape[0], num_classes, device=device, dtype=dtype)
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start:start + chunk_size].to(device=device, dtype=dtype), dim=1)
        sims, idx = _top_k_neighbours(queries, bank, k, bank_chunk)
        weights = sims.div_(temperature).exp_()
        scores[start:start + queries.shape[0]].scatter_add_(1, bank_labels[idx], weights)
    return scores


def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None, chunk_size: int | None = None,
                max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> Tensor:
    """Predicted labels ``[num_test]`` (int64, on the bank's device): argmax of ``knn_class_scores``."""
    scores = knn_class_scores(train_features, train_labels, test_features, k, temperature, num_classes,
                              chunk_size, max_chunk_elements)
    return scores.argmax(dim=1)


def top_k_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each k (clipped to the classes)."""
    labels = labels.to(scores.device).long()
    if scores.shape[0] == 0:
        raise ValueError("cannot compute accuracy on an empty test set")
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                 chunk_size: int | None = None) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of the weighted k-NN classifier on labelled test features."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_class_scores(train_features, train_labels, test_features, k, temperature, num_classes,
                              chunk_size)
    accuracy = top_k_accuracy(scores, test_labels, (1, 5))
    return {"top1": accuracy[1], "top5": accuracy[5]}


@dataclass
class KNNEvalConfig:
    """``python -m evaluation.knn``: k-NN accuracy of a frozen backbone (train split = bank, test = queries)."""

    checkpoint: str = "???"
    data: DataConfig = field(default_factory=DataConfig)
    k: list[int] = field(default_factory=lambda: [200, 20])
    temperature: float = 0.1
    image_size: int | None = None   # evaluation resolution; None: the dataset's native size
    batch_size: int = 256              # feature extraction batch
    num_workers: int = 4
    max_train_images: int | None = None
    device: str = "auto"
    output: str | None = None
    overwrite: bool = False


def _evaluate_cli(cfg: KNNEvalConfig) -> dict:
    train_x, train_y, test_x, test_y = labelled_features(cfg)
    results: dict = {}
    for k in cfg.k:
        accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=cfg.temperature)
        results[f"knn_top1_k{k}"] = accuracy["top1"]
        results[f"knn_top5_k{k}"] = accuracy["top5"]
    return results


def main(argv: list[str] | None = None) -> int:
    return run_protocol(KNNEvalConfig, _evaluate_cli, argv, protocol="knn")


if __name__ == "__main__":
    sys.exit(main())
