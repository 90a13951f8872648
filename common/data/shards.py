"""Sharded streaming (``data.name=webdataset``): tar shards on local disk or behind URLs, read in sequence.

A split is a list of tar shards in the WebDataset layout (each sample: an image member ``KEY.jpg|png|...``
and, when labelled, ``KEY.cls`` holding the class number) described by ``shards.json`` in ``data.root``
(a folder or a URL), which ``python -m common.data.make_shards`` writes::

    {"format": "ssl-repro-shards/1", "classes": ["cat", "dog"],
     "info": {"channels": 3, "image_size": 224, "mean": [...], "std": [...]},
     "splits": {"train": {"shards": "train-{000000..000127}.tar", "counts": [1000, ..., 214],
                          "labels": [3, 0, ...], "bytes": [2662400, ..., 573440]},
                "test": {...}}}

``shards`` is a brace pattern, relative to ``data.root`` unless it is an absolute path or a URL; ``counts``
are the samples of each shard, in order; ``labels`` (optional) every sample's label in shard order, for
class-balanced subsets of the probes; ``bytes`` (optional) the size of each shard file. Opening a split checks
every local shard (``check_shards``), so a missing or truncated one is found before a run trains, not when the
stream reaches it. Reading goes through the ``webdataset`` library (``gopen`` opens
local files, ``http(s)://`` with curl, ``pipe:`` commands).

``ShardedDataset.epoch_loader`` gives a rank's batches of one epoch in the deterministic order of
``common.data.shard_plan``: the trainer asks for ``(epoch, rank, world, start_batch)``, so a resumed run
continues at the right sample. Views are seeded by ``(seed, epoch, sample)`` as in ``MultiViewDataset``.
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from common.data.config import DataConfig, DatasetInfo
from common.data.datasets import DECODE_ERRORS, corrupt_image_error, seeded_views, view_seed
from common.data.folders import IMAGE_EXTENSIONS
from common.data.pixels import to_mode
from common.data.shard_plan import EpochPlan, sample_order, shard_order, worker_stretches
from common.data.skip_record import SkipTracking
from common.errors import ConfigError, DataError

INDEX_FILE = "shards.json"
INDEX_FORMAT = "ssl-repro-shards/1"
_IMAGE_SUFFIXES = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def _is_remote(location: str) -> bool:
    return len(urlparse(location).scheme) > 1  # "C:" is a drive, not a scheme


def _join(root: str, name: str) -> str:
    if _is_remote(name) or Path(name).is_absolute():
        return name
    return f"{root.rstrip('/')}/{name}" if _is_remote(root) else str(Path(root) / name)


def read_index(root: str) -> dict:
    """``shards.json`` of ``root`` (a folder or URL)."""
    from webdataset.gopen import gopen

    location = _join(root, INDEX_FILE)
    try:
        with gopen(location) as stream:
            index = json.loads(stream.read())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {location} ({error}): data.root of data.name=webdataset must hold the "
                        f"{INDEX_FILE} that python -m common.data.make_shards writes") from error
    if index.get("format") != INDEX_FORMAT:
        raise DataError(f"{location} is not a shard index of format {INDEX_FORMAT} (format: {index.get('format')})")
    return index


def index_info(index: dict) -> DatasetInfo:
    info = index["info"]
    return DatasetInfo(info["channels"], info["image_size"], len(index["classes"]), tuple(info["mean"]),
                       tuple(info["std"]))


class ShardedDataset(IterableDataset, SkipTracking):
    """One split of a sharded dataset: ``len()`` samples, ``classes``, ``targets`` (when ``shards.json`` lists
    the labels) and ``epoch_loader`` for the stream; iterating it directly follows its ``plan``."""

    def __init__(self, urls: list[str], counts: list[int], labels: list[int] | None, classes: list[str],
                 mode: str, skip_corrupt: bool):
        if len(urls) != len(counts):
            raise DataError(f"{INDEX_FILE} lists {len(counts)} sample counts for {len(urls)} shards")
        self.urls, self.counts, self.classes = urls, list(counts), classes
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.targets = torch.as_tensor(labels if labels is not None else [-1] * len(self), dtype=torch.int64)
        if len(self.targets) != len(self):
            raise DataError(f"{INDEX_FILE} lists {len(self.targets)} labels for {len(self)} samples")
        self.mode, self.skip_corrupt = mode, skip_corrupt
        self.corrupt = torch.zeros(len(self), dtype=torch.uint8).share_memory_()  # as in _DecodingDataset
        self.track_skips()
        self.plan = EpochPlan(epoch=0, seed=0, batch_size=1, shuffle=False)
        self.transforms: Sequence[Callable] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def describe(self, sample: int) -> str:
        shard = int(np.searchsorted(self.starts, sample, side="right")) - 1
        return f"sample {sample - self.starts[shard]} of shard {self.urls[shard]}"

    @property
    def skipped(self) -> list[str]:
        return [self.describe(i) for i in self.corrupt.nonzero().flatten().tolist()]

    def subset(self, indices) -> ShardedDataset:
        raise ConfigError("data.subset is not available for data.name=webdataset: write the subset's shards "
                          "with python -m common.data.make_shards instead")

    def epoch_loader(self, plan: EpochPlan, transforms: Sequence[Callable] | None = None,
                     pin_memory: bool = False) -> DataLoader:
        """The rank's batches of ``plan.epoch`` from batch ``plan.start_batch`` on, each
        ``([view tensors [B, C, H, W], one per transform], labels [B])`` (or ``(list of PIL images, labels)``
        without transforms), loaded by ``plan.num_workers`` workers."""
        configured = copy.copy(self)  # shares the shared-memory ``corrupt`` marks
        configured.plan, configured.transforms = plan, transforms
        return DataLoader(configured, batch_size=None, num_workers=plan.num_workers, pin_memory=pin_memory,
                          persistent_workers=False)

    def __iter__(self) -> Iterator:
        worker = get_worker_info()
        if worker is not None and worker.num_workers != max(self.plan.num_workers, 1):
            raise ValueError(f"the plan is for {self.plan.num_workers} workers, the DataLoader has {worker.num_workers}")
        reader = _EpochReader(self, self.plan)
        for first, end in worker_stretches(len(self), self.plan, worker.id if worker is not None else 0):
            samples = [reader.sample(position) for position in range(first, end)]
            yield self._collate(samples)

    def _collate(self, samples: list[tuple[int, Image.Image, int]]):
        labels = torch.tensor([label for _, _, label in samples], dtype=torch.int64)
        if self.transforms is None:
            return [image for _, image, _ in samples], labels
        views = [seeded_views(self.transforms, image, view_seed(self.plan.seed, self.plan.epoch, sample))
                 for sample, image, _ in samples]
        return default_collate(views), labels


class _EpochReader:
    """The samples at positions of one epoch's sequence, reading each shard once as the positions reach it."""

    def __init__(self, dataset: ShardedDataset, plan: EpochPlan):
        self.dataset, self.plan = dataset, plan
        self.shards = shard_order(len(dataset.urls), plan)
        self.ends = np.cumsum(np.asarray(dataset.counts)[self.shards])
        self.shard, self.members, self.order = -1, [], np.arange(0)

    def sample(self, position: int) -> tuple[int, Image.Image, int]:
        """``(sample number in the split, decoded image, label)`` at ``position``."""
        slot = int(np.searchsorted(self.ends, position, side="right"))
        shard = int(self.shards[slot])
        if shard != self.shard:
            self.shard, self.members = shard, self._read(shard)
            self.order = sample_order(len(self.members), shard, self.plan)
        offset = position - (int(self.ends[slot - 1]) if slot else 0)
        dataset = self.dataset
        for step in range(len(self.members)):
            within = int(self.order[(offset + step) % len(self.members)])
            sample = int(dataset.starts[shard]) + within
            try:
                image, label = self._decode(self.members[within])
                return sample, image, label
            except DECODE_ERRORS as error:
                if not dataset.skip_corrupt:
                    raise corrupt_image_error(dataset.describe(sample), error) from error
                if step == 0:  # the rule of _DecodingDataset: once per process and run
                    dataset.mark_skipped(sample, dataset.describe(sample), error)
        raise corrupt_image_error(f"shard {self.dataset.urls[shard]}", ValueError("no readable image at all"))

    def _read(self, shard: int) -> list[dict]:
        from webdataset.tariterators import tarfile_samples

        url = self.dataset.urls[shard]
        try:
            members = list(tarfile_samples([{"url": url}]))
        except Exception as error:
            raise DataError(f"cannot read shard {url}: {' '.join(str(error).split())}") from error
        if len(members) != self.dataset.counts[shard]:
            raise DataError(f"shard {url} holds {len(members)} samples, {INDEX_FILE} says "
                            f"{self.dataset.counts[shard]}")
        return members

    def _decode(self, member: dict) -> tuple[Image.Image, int]:
        suffixes = [key for key in member if key in _IMAGE_SUFFIXES]
        if len(suffixes) != 1:
            raise DataError(f"sample {member['__key__']} has {len(suffixes)} image members")
        with Image.open(io.BytesIO(member[suffixes[0]])) as image:
            decoded = to_mode(image, self.dataset.mode)
        return decoded, int(member["cls"]) if "cls" in member else -1


def _samples_in_tar(path: str) -> int:
    """The samples of a tar shard, counted from its member headers (no image data is read)."""
    from webdataset.tariterators import base_plus_ext

    try:
        with tarfile.open(path) as archive:
            return len({base_plus_ext(member.name)[0] for member in archive if member.isfile()} - {None})
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"shard {path} cannot be read, or is cut short ({error}): write it again with "
                        "python -m common.data.make_shards") from None


def check_shards(urls: list[str], counts: list[int], sizes: list[int] | None) -> None:
    """Every local shard exists and is whole: its size is the one ``shards.json`` records (``bytes``), or, for an
    index written without sizes, its tar headers name ``counts`` samples (slower: every header is read). Shards
    behind a URL are checked when they are read."""
    if sizes is not None and len(sizes) != len(urls):
        raise DataError(f"{INDEX_FILE} lists {len(sizes)} shard sizes for {len(urls)} shards")
    for number, (url, count) in enumerate(zip(urls, counts)):
        if _is_remote(url) and not url.startswith("file:"):
            continue
        path = Path(url2pathname(urlparse(url).path)) if url.startswith("file:") else Path(url)
        if not path.is_file():
            raise DataError(f"shard {url} not found ({INDEX_FILE} lists it)")
        if sizes is not None and path.stat().st_size != sizes[number]:
            raise DataError(f"shard {url} holds {path.stat().st_size} bytes, {INDEX_FILE} says {sizes[number]}: "
                            "it was cut short or replaced; write it again with python -m common.data.make_shards")
        if sizes is None and (found := _samples_in_tar(str(path))) != count:
            raise DataError(f"shard {url} holds {found} samples, {INDEX_FILE} says {count}")


def load_webdataset(cfg: DataConfig, split: str) -> ShardedDataset:
    from webdataset.shardlists import expand_urls

    index = read_index(cfg.root)
    if split not in index["splits"]:
        raise ConfigError(f"the shards at {cfg.root} have no split '{split}' (splits: {', '.join(index['splits'])})")
    entry = index["splits"][split]
    urls = [_join(cfg.root, name) for name in expand_urls(entry["shards"])]
    mode = "L" if index["info"]["channels"] == 1 else "RGB"
    dataset = ShardedDataset(urls, entry["counts"], entry.get("labels"), index["classes"], mode, cfg.skip_corrupt)
    check_shards(urls, entry["counts"], entry.get("bytes"))
    return dataset
