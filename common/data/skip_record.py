"""Corrupt images skipped with ``data.skip_corrupt=true``: reported once and counted once per run, whichever data
sets read them (the training set, the evaluation's train and test splits) and in whichever process (the main one
or its DataLoader workers).

A decoding data set marks the samples it skipped in a shared-memory tensor (``corrupt``), so the main process sees
what its workers found. A ``SkipRecord`` opened around a run (``with SkipRecord() as record``) collects the data
sets made while it is open; ``record.files()`` is the union of the marks of those alive and of those handed over
by data sets that went (``hand_over_skips``: an evaluation's splits, after their features). A sample is reported when it is first marked, unless a data
set of the same record has skipped the same file already.
"""

from __future__ import annotations

import sys
import weakref
from typing import ClassVar, Self


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def report_skipped(where: str, error: Exception) -> None:
    """Tell the user that the image ``where`` is skipped; on stderr, not ``warnings.warn``: a DataLoader
    worker's warning filters are not the user's to count on."""
    print(f"warning: skipping corrupt image {where}: {one_line(error)}", file=sys.stderr, flush=True)


class SkipRecord:
    """The corrupt images skipped by the data sets made while it is open, in this process and its loader workers."""

    _open: ClassVar[list[SkipRecord]] = []

    def __init__(self):
        self.datasets: weakref.WeakSet = weakref.WeakSet()
        self.gone: set[str] = set()  # skipped by data sets already collected
        # each data set's skipped files, with its number of marks then: described again only once it marks more
        self.described: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __enter__(self) -> Self:
        SkipRecord._open.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        SkipRecord._open.remove(self)

    def _skipped_by(self, dataset) -> set[str]:
        marks = int(dataset.corrupt.sum())
        if dataset not in self.described or self.described[dataset][0] != marks:
            self.described[dataset] = (marks, set(dataset.skipped))
        return self.described[dataset][1]

    def files(self, other_than=None) -> set[str]:
        """The files skipped so far (by data sets other than ``other_than``)."""
        return self.gone.union(*(self._skipped_by(dataset) for dataset in list(self.datasets)
                                 if dataset is not other_than))

    def __getstate__(self) -> dict:  # a worker started by spawn gets the files known so far (a WeakSet cannot travel)
        return {"gone": self.files()}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.gone = state["gone"]


class SkipTracking:
    """What a data set with ``corrupt`` marks and a ``skipped`` property (the descriptions of its marked samples)
    needs to take part in the open ``SkipRecord``s: call ``track_skips`` in ``__init__``, ``mark_skipped`` for each
    sample it skips; ``hand_over_skips(dataset)`` before it goes."""

    corrupt: object  # uint8 tensor in shared memory, one mark per sample
    skipped: list[str]

    def track_skips(self) -> None:
        self.skip_records = list(SkipRecord._open)
        for record in self.skip_records:
            record.datasets.add(self)

    def mark_skipped(self, index: int, where: str, error: Exception) -> None:
        """Mark sample ``index`` (the file ``where``) skipped, and report it unless it is marked already or a data
        set of the same run has skipped the file."""
        if self.corrupt[index]:
            return
        known = any(where in record.files(other_than=self) for record in self.skip_records)  # self: by index
        self.corrupt[index] = 1
        if not known:
            report_skipped(where, error)


def hand_over_skips(dataset) -> None:
    """Copy the marks of ``dataset`` into its records, for a data set about to go (an evaluation's splits): the
    records see only the data sets still alive. Not a ``__del__``: tensors touched while the garbage collector
    clears a cycle abort PyTorch. A data set without marks (in memory) has nothing to hand over."""
    for record in getattr(dataset, "skip_records", ()):
        record.gone.update(dataset.skipped)
