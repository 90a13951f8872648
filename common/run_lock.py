"""One run at a time in a run folder: an exclusive ``flock`` on the folder's ``.ssl-repro-run`` file.

Two training processes in one folder (two terminals, or a requeued ``resume=auto`` job while the first still
runs) would interleave their ``metrics.jsonl`` lines and checkpoints. The main process of a run holds the lock
from the moment it prepares the folder until it ends; the operating system releases it when the process dies,
so a ``kill -9`` leaves no stale lock (the file stays, and marks the folder as a run of ours:
``common.checkpoint.is_run_folder``). The file holds the holder's process id, for the message of the run that
is refused. On NFS, Linux implements ``flock`` with byte-range locks that every client sees.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.errors import RunFolderError

LOCK_FILE = ".ssl-repro-run"


def _in_use(folder: Path, pid: str) -> RunFolderError:
    holder = f" (process {pid})" if pid.isdigit() else ""
    return RunFolderError(f"output_dir '{folder}' is in use by another run{holder}: wait for it to end, or choose "
                          "another output_dir")


def check_unlocked(folder: str | Path) -> None:
    """Refuse a folder whose lock another process holds, without writing anything (a probe before set-up)."""
    path = Path(folder) / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (a new folder), or one we cannot read: acquiring it will say why
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(folder), os.pread(descriptor, 32, 0).decode(errors="replace").strip()) from None
    finally:
        os.close(descriptor)  # closing releases the probe's shared lock


class RunLock:
    """The exclusive lock of a run folder, held from ``acquire`` until ``release`` or the end of the process."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.descriptor: int | None = None

    def acquire(self) -> RunLock:
        """Create the folder and its lock file if needed and lock it; a ``RunFolderError`` naming the holder's
        process id when another process holds it, or naming the reason when the folder cannot be written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise RunFolderError(f"output_dir '{self.folder}' cannot be written: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise _in_use(self.folder, pid) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self.descriptor = descriptor
        return self

    def release(self) -> None:
        if self.descriptor is not None:
            # unlocked explicitly: a forked DataLoader worker still holds a copy of the descriptor
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            os.close(self.descriptor)
            self.descriptor = None
