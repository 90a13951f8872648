"""A study's finished jobs kept with the repository, so that its tables regenerate, and the study goes on, on
any machine.

A study's runs live on the machine that ran them; a study of many CPU-hours is run over several machines. After
the runner has run, ``save`` copies the small files of every finished job (its results, metrics, config, and the
runner's record and log: the text files, never checkpoints, weights, TensorBoard events or images) into the
archive (``docs/reproduction/records`` for the full budget), laid out as the runs are. Before it runs, ``restore``
copies into the runs folder every archived job that is not there, with a ``restored.json`` marker beside its
record. A restored job is finished as the runner judges it (its ``done`` file and record are there), so the
study skips it and its report reads it; but it holds no checkpoint, so when a job still to run needs it, the
runner runs it again, as the same job recomputing its record, so the jobs that read its earlier run stay done
(``common.study.jobs.restored_needed``). Nothing local is overwritten: a job with a folder under the
runs folder is never restored over.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from common.checkpoint import CHECKPOINT_DIR, TENSORBOARD_DIR
from common.study.jobs import RECORD, RESTORED, Job

# What a report reads is JSON; the rest are what a reader checks a number against (config, curves, logs).
ARCHIVED_SUFFIXES = (".json", ".jsonl", ".yaml", ".log", ".txt", ".csv", ".md")
LEFT_OUT_FOLDERS = (CHECKPOINT_DIR, TENSORBOARD_DIR)  # weights and event files: large, and no report reads them


def archived_files(folder: Path) -> list[Path]:
    """The files of ``folder`` the archive keeps, relative to it."""
    if not folder.is_dir():
        return []
    return sorted(path.relative_to(folder) for path in folder.rglob("*")
                  if path.is_file() and path.suffix in ARCHIVED_SUFFIXES and path.name != RESTORED
                  and path.relative_to(folder).parts[0] not in LEFT_OUT_FOLDERS)


def _copy(files: Iterable[Path], source: Path, target: Path) -> None:
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target / relative)


def save(jobs: Iterable[Job], archive: Path) -> list[str]:
    """Copy each finished job's small files (``archived_files`` of its folder and of the runner's folder beside it)
    into ``archive``, replacing that job's earlier copy; a restored job is already there. A job is finished here
    when its ``done`` file and record exist (a record of another identity is judged where it is restored). The
    names saved."""
    saved = []
    for job in jobs:
        if not job.done.is_file() or not (job.state / RECORD).is_file() or job.restored:
            continue
        for folder in (job.folder, job.state):
            target = archive / folder.relative_to(job.runs)
            fresh = target.with_name(f"{target.name}.saving")
            shutil.rmtree(fresh, ignore_errors=True)  # a save cut short: only ever the archive's own copy
            _copy(archived_files(folder), folder, fresh)
            fresh.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)  # the archive's copy of a run that has finished again
            fresh.rename(target)
        saved.append(job.name)
    return saved


def restore(jobs: Iterable[Job], archive: Path) -> list[str]:
    """Copy into its runs folder every job of ``jobs`` that the archive holds a record of and that has neither folder
    there, marked as restored. The names restored."""
    restored = []
    for job in jobs:
        state = archive / job.state.relative_to(job.runs)
        if not (state / RECORD).is_file() or job.folder.exists() or job.state.exists():
            continue
        for folder in (job.folder, job.state):
            source = archive / folder.relative_to(job.runs)
            _copy(archived_files(source), source, folder)
            folder.mkdir(parents=True, exist_ok=True)
        (job.state / RESTORED).write_text(json.dumps({"from": str(archive), "at": time.time()}) + "\n")
        restored.append(job.name)
    return restored
