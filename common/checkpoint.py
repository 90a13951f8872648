"""Run folders and training checkpoints that survive crashes.

A checkpoint is a folder ``<output_dir>/checkpoints/step_<N>/`` holding ``state.pt`` (model, optimiser,
grad-scaler, progress, config, code version) and ``backbone.safetensors``. It is written into a temporary
folder first and renamed into place, so a kill at any moment during a save leaves the previous
checkpoint complete and loadable; folders whose name does not match ``step_<N>`` are never read, and the
temporaries a killed save or a full disk left (``.tmp_step_*``) are removed when the next run starts.

A run of ours (``is_run_folder``) is a folder holding ``.ssl-repro-run``, the lock file every run creates when
it starts (``common.run_lock``); a folder of a run from before that file counts when it holds our
``config.yaml`` and either a checkpoint ``checkpoints/step_<N>/state.pt`` or nothing but what a run writes.
A run starts only in a new folder, an empty one, or a run of ours: any other folder is refused,
``overwrite=true`` included, since it may be a data set or someone's work. ``overwrite=true`` removes only the
files a run writes, by name (``remove_run_files``); whatever else the folder holds stays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config import diff_configs, dotted_value
from common.errors import RunFolderError
from common.run_lock import LOCK_FILE, RunLock, check_unlocked

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
_STEP_NAME = re.compile(r"^step_(\d+)$")
# Keys that cannot change what a run computes: an interrupted run may be resumed with other values.
RESUMABLE_KEYS = {"output_dir", "resume", "overwrite", "progress_bar", "log_every_steps", "tracker",
                  "tracker_project",
                  "save_every_epochs", "save_every_steps", "keep_last", "on_nonfinite", "max_skipped_fraction",
                  "data.root", "data.download", "data.num_workers", "eval.batch_size", "eval.progress"}
# What a run writes into its folder: removed by overwrite=true, and the leftovers of a start that failed
# before its first step are removed by the next start. Inside checkpoints/ only step_<N> and .tmp_step_* folders,
# inside train/ only TensorBoard event files (Accelerate's tracker, init_trackers("train")) are a run's.
RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "timing.json", "backbone.safetensors", "data.json")
TENSORBOARD_DIR, TENSORBOARD_EVENTS = "train", "events.out.tfevents.*"
_TEMPORARY_NAME = re.compile(r"^\.tmp_step_\d+_\d+$")
# The trainer saves the method and the online probe as one module (common.trainer.TrainingModule): the
# method's weights are the model state's keys under this prefix.
METHOD_PREFIX = "method."
RUN_FILE_PATTERNS = ("eval_*.json", "eval_*.png")  # evaluation commands' results written next to the run


def code_version() -> str:
    """The git commit of the code (``+dirty`` when modified), or the package version outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        if commit:
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ssl-repro")
    except PackageNotFoundError:
        return "unknown"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP_NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def holds_run(output_dir: str | Path) -> bool:
    """Whether a folder holds a run that did work: a checkpoint, logged steps, or final results. A start that
    failed before its first step leaves at most its config and empty logs, which do not count."""
    folder = Path(output_dir)
    metrics = folder / "metrics.jsonl"
    return bool(list_checkpoints(folder) or (metrics.is_file() and metrics.stat().st_size > 0)
                or (folder / "results.json").exists() or (folder / "backbone.safetensors").exists())


def _written_by_a_run(path: Path) -> bool:
    """Whether an entry of a run folder has a name that a run (or an evaluation of it) writes."""
    return (path.name in (*RUN_FILES, CHECKPOINT_DIR, TENSORBOARD_DIR, LOCK_FILE)
            or any(path.match(pattern) for pattern in RUN_FILE_PATTERNS))


def is_run_folder(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` is a run of ours (what counts: the module docstring)."""
    folder = Path(output_dir)
    if (folder / LOCK_FILE).is_file():
        return True
    if not (folder / "config.yaml").is_file():
        return False
    return bool(list_checkpoints(folder)) or all(_written_by_a_run(path) for path in folder.iterdir())


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse, before anything is built, an ``output_dir`` that a run cannot use: empty (it would be the current
    folder), a file or under one, a place we cannot write, a folder holding something other than a run of
    ours, or one that another run is using. Writes nothing but a probe file, removed at once."""
    if not str(output_dir).strip():
        raise RunFolderError("output_dir is empty: name the run's folder (a run never writes into the current "
                             "folder unnamed)")
    folder = Path(output_dir)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under '{existing}', a file"
        raise RunFolderError(f"output_dir '{folder}' {where}: name a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".ssl-repro-probe-", dir=existing)
    except OSError as error:
        raise RunFolderError(f"output_dir '{folder}' cannot be written ('{existing}': {error.strerror})") from None
    os.close(descriptor)
    os.unlink(probe)
    if existing == folder and any(folder.iterdir()) and not is_run_folder(folder):
        raise RunFolderError(f"output_dir '{folder}' is not empty and holds no run of ours (no {LOCK_FILE} or "
                             "config.yaml with checkpoints): choose a new or empty folder; overwrite=true replaces "
                             "only a run of ours")
    check_unlocked(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold nothing, deepest first."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                            key=lambda p: len(p.parts), reverse=True) + [folder]:
        if not any(directory.iterdir()):
            directory.rmdir()


def remove_temporaries(output_dir: str | Path) -> None:
    """Remove the ``.tmp_step_*`` folders of saves that a kill or a full disk stopped midway. Only a process that
    holds the folder's lock may call it: a running save's temporary would go too."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            if _TEMPORARY_NAME.match(path.name):
                _remove(path)


def remove_run_files(output_dir: str | Path) -> None:
    """Remove, by name, what a run writes (``RUN_FILES``, ``RUN_FILE_PATTERNS``, checkpoint and temporary folders,
    TensorBoard event files); anything else stays, and a folder keeping something else stays too."""
    folder = Path(output_dir)
    for path in [folder / name for name in RUN_FILES] + [p for pattern in RUN_FILE_PATTERNS for p in folder.glob(pattern)]:
        if path.is_file() or path.is_symlink():
            path.unlink()
    checkpoints, tensorboard = folder / CHECKPOINT_DIR, folder / TENSORBOARD_DIR
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for path in checkpoints.iterdir():
            if _STEP_NAME.match(path.name) or _TEMPORARY_NAME.match(path.name):
                _remove(path)
    if tensorboard.is_dir() and not tensorboard.is_symlink():
        for path in tensorboard.rglob(TENSORBOARD_EVENTS):
            if path.is_file():
                path.unlink()
    _remove_if_empty(checkpoints)
    _remove_if_empty(tensorboard)


def prepare_run_folder(output_dir: str | Path, resume: str, overwrite: bool, config_text: str | None = None
                       ) -> tuple[Path | None, RunLock]:
    """The checkpoint to resume from (None for a new run) and the folder's lock, held until released; refuses a
    folder that is not a run of ours (``check_output_dir``) and a new run over another one.

    ``resume``: "false" (a new run; a folder holding another run is refused unless ``overwrite``), "true"
    (continue the latest checkpoint, which must exist) or "auto" (continue it if there is one, else start:
    what a requeued cluster job wants). Under "auto", a folder whose run was stopped before its first
    checkpoint, with the same config (``config_text``, the ``config.yaml`` this run writes), starts again:
    nothing in it can be continued, and refusing would fail every requeue of a job preempted that early.
    Temporaries of interrupted saves are removed first: they are never checkpoints.
    """
    folder = Path(output_dir)
    check_output_dir(folder)
    lock = RunLock(folder).acquire()
    try:
        remove_temporaries(folder)
        checkpoint = latest_checkpoint(folder) if resume in ("true", "auto") else None
        if resume == "true" and checkpoint is None:
            raise RunFolderError(f"resume=true but output_dir '{folder}' has no checkpoint to continue (resume=auto "
                                 "starts a new run when there is none)")
        if checkpoint is None:
            saved_config = folder / "config.yaml"
            same_run_unsaved = (resume == "auto" and config_text is not None and saved_config.is_file()
                                and saved_config.read_text() == config_text
                                and not (folder / "results.json").exists())
            if holds_run(folder) and not (overwrite or same_run_unsaved):
                raise RunFolderError(f"output_dir '{folder}' holds another run: pass resume=true to continue it, "
                                     "overwrite=true to replace it, or choose another output_dir")
            remove_run_files(folder)  # the other run (overwrite=true), the same run before its first checkpoint,
            # or what a failed start left
    except BaseException:
        lock.release()
        raise
    return checkpoint, lock


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any], write_extra=None,
                    keep_last: int | None = None) -> Path:
    """Write ``state`` (and whatever ``write_extra(folder)`` adds) atomically as checkpoint ``step``."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / STATE_FILE)
    if write_extra is not None:
        write_extra(tmp)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved twice (e.g. an epoch end that is also a save_every_steps step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(folder)
    if keep_last:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".tmp_step_*"):  # left by a process killed during a save
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    """Flush the files of ``path`` and the directory itself: a rename is durable only once the directory entry
    that records it is on disk."""
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = Path(path) / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 (torch raises several types for truncated or foreign files)
        raise RunFolderError(f"checkpoint '{file}' cannot be read: {type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from None


def load_method_weights(method: nn.Module, state: dict[str, Any], source: str | Path) -> nn.Module:
    """Put the method weights of a loaded checkpoint ``state`` (read from ``source``) into ``method``, built as
    the run built it; returns it in eval mode. A checkpoint of another method is a ``RunFolderError``."""
    weights = {key.removeprefix(METHOD_PREFIX): value for key, value in state["model"].items()
               if key.startswith(METHOD_PREFIX)}
    try:
        method.load_state_dict(weights)
    except RuntimeError as error:  # "Error(s) in loading state_dict for X:", then one line per mismatch
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise RunFolderError(f"checkpoint '{source}' does not fit the method it names: "
                             f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    return method.eval()


def check_resumable(saved_config: dict[str, Any], config: dict[str, Any], path: Path,
                    before_added: dict[str, Any] | None = None) -> list[str]:
    """One-line error naming the keys that differ between a checkpoint's config and the current one. Keys the
    checkpoint's config lacks were added to the code after the run started: they do not block a resume (an
    upgrade must not strand a week-long run). Where ``before_added`` (``common.config_upgrade.values_before_added_keys``)
    gives the value such a key's runs computed before it existed, the key must have it (another value would
    change the run halfway); the other added keys are returned, so that the trainer says which values they take."""
    differing = [key for key in diff_configs(saved_config, config) if key not in RESUMABLE_KEYS]
    added = [key for key in differing if not dotted_value(saved_config, key)[0] and dotted_value(config, key)[0]]
    differing = [key for key in differing if key not in added]
    if differing:
        raise RunFolderError(f"cannot resume from '{path}': config differs in {', '.join(differing)} "
                             "(resume with the same config, or start a new output_dir)")
    before_added = before_added or {}
    changed = [f"{key}={before_added[key]!r}, not {dotted_value(config, key)[1]!r}"
               for key in added if key in before_added and dotted_value(config, key)[1] != before_added[key]]
    if changed:
        raise RunFolderError(f"cannot resume from '{path}': it was saved before these keys existed, so it computed "
                             f"{'; '.join(changed)} (resume without them, or start a new output_dir)")
    return [key for key in added if key not in before_added]
