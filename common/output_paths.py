"""Where a command will write its results, checked before it works: a mistyped path costs one line, not the
evaluation or analysis that ran before the write failed."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import ConfigError


def _check_folder_can_be_made(folder: Path, option: str, value: Path) -> None:
    """The nearest existing ancestor of ``folder`` (itself included) is a folder this process can write in."""
    for existing in (folder, *folder.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            raise ConfigError(f"{option}={value}: '{existing}' is a file, so no folder can be made in its place")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{option}={value}: cannot write in '{existing}'")
        return


def check_output_file(path: str | Path, option: str, siblings: tuple[str, ...] = ()) -> Path:
    """``path`` as a file this command may write (or replace): not a folder, and its folder can be made; the same
    for the files of the same name with the suffixes ``siblings`` (".png": a figure written beside it)."""
    path = Path(path)
    for file in (path, *(path.with_suffix(suffix) for suffix in siblings)):
        if file.is_dir():
            raise ConfigError(f"{option}={path}: '{file}' is a folder; name the file to write")
    _check_folder_can_be_made(path.parent, option, path)
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """``path`` as a folder this command may write files into: not a file, and it can be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}={path} is a file: name a folder for the results")
    _check_folder_can_be_made(path, option, path)
    return path
