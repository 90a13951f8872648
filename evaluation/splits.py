"""Labelled subsets for semi-supervised evaluation and validation splits.

- The SimCLR ImageNet subsets (1% and 10% of the training images): text files published with SimCLR that
  list one training image file name per line (``n01440764_10026.JPEG``). They are downloaded on first use
  into a cache folder (``$SSL_REPRO_CACHE`` or ``~/.cache/ssl-repro``); ``subset_file`` overrides the
  download. No copy ships with this project.
- A random stratified fraction of any labelled dataset (the same fraction of every class, at least one
  image per class).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from common.errors import ConfigError, DataError

SIMCLR_SUBSET_URLS = {
    1: "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/1percent.txt",
    10: "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/10percent.txt",
}


def cache_dir() -> Path:
    return Path(os.environ.get("SSL_REPRO_CACHE", Path.home() / ".cache" / "ssl-repro"))


def simclr_subset_file(percent: float, subset_file: str | None = None) -> Path:
    """The SimCLR split file for ``percent`` (1 or 10): ``subset_file`` if given, else the cached download."""
    if subset_file:
        path = Path(subset_file)
        if not path.is_file():
            raise DataError(f"subset_file not found: {path}")
        return path
    if percent not in SIMCLR_SUBSET_URLS:
        raise ConfigError(f"SimCLR publishes 1% and 10% ImageNet subsets, not {percent}%; pass subset_file")
    percent = int(percent)
    path = cache_dir() / "simclr_subsets" / f"{percent}percent.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        try:
            urllib.request.urlretrieve(SIMCLR_SUBSET_URLS[percent], tmp)
        except OSError as error:
            raise DataError(f"could not download the SimCLR {percent}% subset from "
                                    f"{SIMCLR_SUBSET_URLS[percent]} ({error}); pass subset_file=PATH") from None
        tmp.replace(path)
    return path


def read_subset_file(path: str | Path) -> list[str]:
    """Image file names listed in a split file, one per line (blank lines ignored)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"subset file {path} lists no image names")
    return names


def indices_of_names(sample_paths: Sequence[str], names: Sequence[str], source: str = "subset file") -> Tensor:
    """Indices of the samples whose file name (last path component) is in ``names``; every name must exist."""
    position = {Path(p).name: i for i, p in enumerate(sample_paths)}
    missing = [name for name in names if name not in position]
    if missing:
        raise DataError(f"{len(missing)} of the {len(names)} images in the {source} are not in the dataset "
                         f"(e.g. {missing[:3]}); check data.root")
    return torch.tensor(sorted(position[name] for name in set(names)), dtype=torch.long)


def stratified_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Sorted indices of a random ``fraction`` of each class (rounded, at least one image per class)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        count = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def sample_paths(dataset) -> list[str]:
    """File paths of an image-folder dataset: ``common.data``'s ``.files``, or torchvision's ``.samples``."""
    files = getattr(dataset, "files", None)
    if files is not None:
        return [str(path) for path in files]
    for attribute in ("samples", "imgs"):
        samples = getattr(dataset, attribute, None)
        if samples is not None:
            return [str(path) for path, _ in samples]
    raise ConfigError(f"{type(dataset).__name__} does not list its image files (.files or .samples); a split file of "
                     "image names needs an image-folder dataset")
