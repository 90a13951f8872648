"""How confident the Bernoulli code is: the bit probabilities sigmoid(phi) of phi = pi(h), and the network
state they are read in.

A hard bit is 1[phi + Logistic(0, 1) noise >= 0] (Appendix A.1), so P(bit = 1) = sigmoid(phi), and the noise's
standard deviation is pi / sqrt(3) ~ 1.81. A bit is *confident* when its probability lies outside (0.1, 0.9),
i.e. |phi| > log 9 ~ 2.2; a unit is *constant* when its deterministic code 1[phi >= 0] is the same on every image.

The backbone's batch norm reads either its running statistics (eval mode, every evaluation) or the statistics
of its batch (train mode, every training step). Before the first step the running statistics are their initial
mean 0 and variance 1, so eval mode reads an un-normalised network that the training step never sees;
``batch_statistics_features`` measures what the training step sees: train-mode batch norm on batches as large as
a training step's (the batch times the views that go through the backbone together), in a random order, with the
running statistics put back afterwards. The images are the evaluation transform's (not augmented views), so the
batch statistics are those of clean images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.plots import new_figure, save_figure
from common.trainer import restored_buffers
from stochcon.analysis.report import write_numbers

CONFIDENT_BELOW, CONFIDENT_ABOVE = 0.1, 0.9  # a bit probability outside (0.1, 0.9) is confident
LOGISTIC_STD = math.pi / math.sqrt(3.0)  # standard deviation of the Logistic(0, 1) noise added to phi


@dataclass
class Confidence:
    images: int
    latent_dim: int
    confident_fraction: float  # share of (image, unit) bit probabilities outside (0.1, 0.9)
    mean_abs_logit: float  # mean |phi| over images and units, against the noise's sd LOGISTIC_STD
    logit_to_noise: float  # mean_abs_logit / LOGISTIC_STD
    max_abs_logit: float  # the largest |phi|: every bit probability lies in sigmoid(+-max_abs_logit)
    active_fraction: float  # share of ones in the code 1[phi >= 0]
    constant_units: int  # units whose code is the same on every image (always on or always off)
    always_on: int
    always_off: int


def confidence(logits: np.ndarray) -> Confidence:
    """The confidence of a Bernoulli code from its logits phi [N images, D units]."""
    phi = np.asarray(logits, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] < 1:
        raise ValueError(f"confidence: logits must be [N, D] with N >= 1, got shape {phi.shape}")
    probability = 1.0 / (1.0 + np.exp(-phi))
    code = phi >= 0
    on, off = code.all(0), (~code).all(0)
    mean_abs = float(np.abs(phi).mean())
    return Confidence(phi.shape[0], phi.shape[1],
                      float(((probability <= CONFIDENT_BELOW) | (probability >= CONFIDENT_ABOVE)).mean()),
                      mean_abs, mean_abs / LOGISTIC_STD, float(np.abs(phi).max()), float(code.mean()), int((on | off).sum()), int(on.sum()),
                      int(off.sum()))


def batch_statistics_features(backbone: nn.Module, images: Tensor, batch_size: int, seed: int = 0
                              ) -> tuple[Tensor, Tensor]:
    """The backbone's features of ``images`` as a training step computes them: train mode (batch norm
    normalises by the statistics of its batch) on batches of ``batch_size`` images in a random order (``seed``),
    the last incomplete batch dropped as the trainer drops it. The running statistics are restored afterwards,
    so the network is left as it was. Rows come back in the order of ``images`` (the dropped ones left out: the
    second value holds the kept indices)."""
    if batch_size < 2 or len(images) < batch_size:
        raise ValueError(f"batch statistics need batches of at least 2 images and {batch_size} <= {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    kept = order[: len(images) // batch_size * batch_size]
    was_training = backbone.training
    out = []
    with torch.no_grad(), restored_buffers(backbone, True) as restore:
        backbone.train()
        try:
            for batch in kept.split(batch_size):
                out.append(backbone(images[batch]))
        finally:
            restore()
            backbone.train(was_training)
    features = torch.cat(out)
    return features[kept.argsort()], kept.sort().values


def confidence_figure(rows: dict[str, Confidence]):
    """Confident share of the bit probabilities (left) and mean |phi| against the noise's sd (right)."""
    fig, (left, right) = new_figure(1, 2, figsize=(10, max(3.0, 0.3 * len(rows) + 1.5)))
    names = list(rows)
    y = np.arange(len(names))
    left.barh(y, [rows[n].confident_fraction for n in names], color="C0")
    left.set_xlim(0, 1)
    left.set_xlabel("bit probabilities outside (0.1, 0.9)")
    right.barh(y, [rows[n].mean_abs_logit for n in names], color="C1")
    right.axvline(LOGISTIC_STD, color="k", linestyle=":", label=f"Logistic noise sd {LOGISTIC_STD:.2f}")
    right.set_xlabel("mean |phi|")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is left else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
    fig.suptitle("Confidence of the Bernoulli code")
    return fig


def write_confidence_report(rows: dict[str, Confidence], out_dir: str | Path) -> Path:
    """`bit_confidence.json` and `bit_confidence.png` (`confidence_figure`)."""
    out_dir = write_numbers(rows, out_dir, "bit_confidence")
    return save_figure(confidence_figure(rows), out_dir / "bit_confidence.png")
