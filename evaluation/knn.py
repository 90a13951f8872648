"""Weighted k-nearest-neighbour classification of frozen features (Wu et al., 2018, "instance discrimination").

For a query q and the L2-normalised bank features f_j with labels y_j:
    s_j   = <q / |q|, f_j / |f_j|>                     (cosine similarity)
    N_k   = indices of the k largest s_j
    score_c = sum_{j in N_k, y_j = c} exp(s_j / T)
    prediction = argmax_c score_c

Two protocols, one key apart (``protocol=wu2018|dino`` here, ``knn_protocol`` in the trainer's final
evaluation through ``knn_settings``):

- ``wu2018`` (the default): k = 200, T = 0.1, the weighted vote of Wu et al. 2018 ("Unsupervised Feature
  Learning via Non-Parametric Instance Discrimination", its weighted k-NN) with k = 200 and the temperature of
  their CIFAR code (their ImageNet code uses 0.07); also reported at k = 20, since MSBReg's supplement
  (Section 2.3) gives 20- and 200-NN accuracies.
- ``dino``: k = 20, T = 0.07, as DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
  Transformers", its k-NN evaluation) and solo-learn's k-NN default; also reported at k = 200.

The work is one matrix product and one ``topk`` per chunk of queries, and a ``scatter_add`` for the vote,
so a 1.28M-image bank and 50k queries fit in memory: a chunk of queries holds at most
``max_chunk_elements`` similarities, and a bank larger than that is scanned in slices whose top-k are merged.

Command line: ``python -m evaluation.knn --checkpoint PATH [data.name=... protocol=dino k=[20] ...]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config_types import Length, NonNegativeInt, PositiveFloat, PositiveInt
from common.data import DataConfig
from common.errors import ConfigError
from evaluation.cli import labelled_features, run_protocol
from evaluation.progress import progress_bar

# Similarities held at once per chunk (float32: 64M elements = 256 MiB).
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class KNNSettings:
    k: int              # the headline k (results key knn_top1_k<k>)
    k_also: int         # a second k, reported beside it
    temperature: float


KNN_PROTOCOLS = {
    "wu2018": KNNSettings(k=200, k_also=20, temperature=0.1),
    "dino": KNNSettings(k=20, k_also=200, temperature=0.07),
}


def knn_settings(protocol: str = "wu2018", k: int | None = None, k_also: int | None = None,
                 temperature: float | None = None) -> KNNSettings:
    """The k, second k and temperature of ``protocol`` (see the module docstring), each replaced by the
    argument of the same name when that is not None."""
    if protocol not in KNN_PROTOCOLS:
        raise ConfigError(f"k-NN protocol must be one of {', '.join(KNN_PROTOCOLS)}, not '{protocol}'")
    overrides = {"k": k, "k_also": k_also, "temperature": temperature}
    return replace(KNN_PROTOCOLS[protocol], **{key: v for key, v in overrides.items() if v is not None})


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
                     max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS, progress: bool = False) -> Tensor:
    """Class scores ``[num_test, num_classes]`` of the weighted k-NN vote (see the module docstring).

    Computation happens on ``train_features.device`` in its dtype. ``chunk_size`` is the number of queries
    per matrix product; by default as many as keep ``chunk_size * num_train <= max_chunk_elements``. When even
    one query row against the whole bank exceeds ``max_chunk_elements``, the bank is scanned in slices.
    ``progress`` shows a bar of the query chunks.
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
    starts = range(0, test_features.shape[0], chunk_size)
    for start in progress_bar(starts, desc=f"k-NN k={k}", enabled=progress):
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
                 chunk_size: int | None = None, progress: bool = False) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of the weighted k-NN classifier on labelled test features."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_class_scores(train_features, train_labels, test_features, k, temperature, num_classes,
                              chunk_size, progress=progress)
    accuracy = top_k_accuracy(scores, test_labels, (1, 5))
    return {"top1": accuracy[1], "top5": accuracy[5]}


def k_used(ks: Sequence[int], bank_size: int, suffix: str = "") -> dict[str, int]:
    """``knn_k<k>_used<suffix>``: the k each vote of ``ks`` used where it is above the bank's ``bank_size`` images.

    Such a vote is the whole bank's vote, a well-defined figure: it is kept under the k asked for (the key the
    protocols and the studies' tables read) and recorded with the k it used, rather than refused. Refusing would
    stop the protocols' k = 200 on small banks (the studies' tiny budgets keep 100 training images), and a
    trainer's final k-NN could only refuse after its training; the trainer and this command record alike."""
    return {f"knn_k{k}_used{suffix}": bank_size for k in ks if k > bank_size}


@dataclass
class KNNEvalConfig:
    """``python -m evaluation.knn``: k-NN accuracy of a frozen backbone (train split = bank, test = queries)."""

    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    data: DataConfig = field(default_factory=DataConfig)
    protocol: Literal["wu2018", "dino"] = "wu2018"           # wu2018: k=200 (and 20), T=0.1 | dino: k=20 (and 200), T=0.07
    k: Annotated[list[PositiveInt], Length(low=1)] | None = None  # None: the protocol's two values of k
    temperature: PositiveFloat | None = None  # None: the protocol's
    image_size: int | None = None   # evaluation resolution; None: the dataset's native size
    batch_size: int = 256              # feature extraction batch
    num_workers: NonNegativeInt = 4  # DataLoader worker processes (0: load in this process)
    max_train_images: PositiveInt | None = None  # this many training images (stratified); None: all
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True          # tqdm bars for the extraction and the vote (like the trainer's)


def _evaluate_cli(cfg: KNNEvalConfig) -> dict:
    settings = knn_settings(cfg.protocol, temperature=cfg.temperature)
    ks: Sequence[int] = cfg.k if cfg.k is not None else (settings.k, settings.k_also)
    train_x, train_y, test_x, test_y = labelled_features(cfg)
    results: dict = {"temperature": settings.temperature}
    for k in ks:
        accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=settings.temperature,
                                progress=cfg.progress_bar)
        results[f"knn_top1_k{k}"] = accuracy["top1"]
        results[f"knn_top5_k{k}"] = accuracy["top5"]
    return results | k_used(ks, len(train_x))


def main(argv: list[str] | None = None) -> int:
    return run_protocol(KNNEvalConfig, _evaluate_cli, argv, protocol="knn")


if __name__ == "__main__":
    sys.exit(main())
