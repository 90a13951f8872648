"""Progress bars of the evaluation protocols, drawn like the trainer's (``common.trainer``).

Every long loop of an evaluation (feature extraction, the k-NN vote, probe training, the L-BFGS
regularisation path, the VOC07 SVMs, MINE) goes through ``progress_bar``: tqdm with
``dynamic_ncols=True, mininterval=1.0`` on stderr, switched off by the protocol's ``progress_bar=false``
(the same key as the trainer's) or by the trainer's own switch when the trainer runs the evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str,
                 enabled: bool) -> tqdm:
    """A tqdm bar over ``iterable`` (or one updated by hand up to ``total``); silent when not ``enabled``."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=1.0)
