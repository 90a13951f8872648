"""Replace the committed tables and figures only with ones that show at least the same runs.

The reports are written from whatever runs and records a machine has. On a machine that has fewer than the one
that wrote ``docs/reproduction/`` (a fresh clone before every table's runs are archived, a study whose jobs
failed), a report would replace cells that show runs with "not run". So the command writes its reports into a
staging folder, and ``publish`` moves each table there, with its figures and data files, over the old one only
when no cell of the old table showed runs that the same cell of the new one does not (``fewer_runs``; a cell the
new table lacks shows none), and no
data file had more numbers. A table it keeps is named, with the first cell it would have lost.

A table is a generated markdown file; its group is every file whose name starts with the table's name
(``stochcon_budget.md``, ``.png``; ``msbreg_table4.md``, ``msbreg_table4_collapse_*.json``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

SEEDS = re.compile(r"--seeds((?: \d+)+)")
SOME_RUNS = re.compile(r"\((\d+) of \d+ seeds\)|higher on \d+/(\d+)|^(\d+) of \d+$")
NO_RUNS = ("not run", "—", "")


def table_cells(text: str) -> dict[tuple[str, str], str]:
    """``{(row label, column header): cell}`` of a markdown file's first table (a repeated label gets ``#2``...)."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    if len(rows) < 2:
        return {}
    header = [name.strip() for name in rows[0]]
    cells, seen = {}, {}
    for row in rows[2:]:
        values = [value.strip() for value in row]
        label = values[0]
        seen[label] = seen.get(label, 0) + 1
        key = label if seen[label] == 1 else f"{label} #{seen[label]}"
        for name, value in zip(header[1:], values[1:]):
            cells[(key, name)] = value
    return cells


def runs_shown(cell: str, seeds: int) -> int:
    """How many runs a cell shows: none for "not run" or "—", n for "(n of N seeds)", "higher on k/n" and "n of N",
    every seed for any other value."""
    if cell in NO_RUNS:
        return 0
    match = SOME_RUNS.search(cell)
    if match:
        return int(next(group for group in match.groups() if group is not None))
    return seeds


def seed_count(text: str) -> int:
    """The seeds the table was written for (its generated-by command's ``--seeds``; 3, the study's default)."""
    match = SEEDS.search(text.splitlines()[0] if text else "")
    return len(match.group(1).split()) if match else 3


def fewer_runs(old: str, new: str) -> str | None:
    """The first cell of ``old`` that shows runs the same cell of ``new`` does not, described; None when none."""
    old_cells, new_cells = table_cells(old), table_cells(new)
    old_seeds, new_seeds = seed_count(old), seed_count(new)
    for key, before in old_cells.items():
        # a row or column the new table lacks shows no runs (a renamed one is replaced with --replace-tables)
        after = new_cells.get(key, "no such cell")
        if runs_shown(after if key in new_cells else "", new_seeds) < runs_shown(before, old_seeds):
            return f"row '{key[0]}', column '{key[1]}': {before} -> {after}"
    return None


def numbers(value) -> int:
    """How many numbers a JSON document holds."""
    if isinstance(value, dict):
        return sum(numbers(item) for item in value.values())
    if isinstance(value, list):
        return sum(numbers(item) for item in value)
    return int(isinstance(value, (int, float)) and not isinstance(value, bool))


def groups(staging: Path) -> Iterator[tuple[str, list[Path]]]:
    """Each staged file under the longest staged table name its name starts with (else under its own stem)."""
    tables = sorted((path.stem for path in staging.glob("*.md")), key=len, reverse=True)
    grouped: dict[str, list[Path]] = {}
    for path in sorted(staging.iterdir()):
        if path.is_file():
            owner = next((t for t in tables if path.stem == t or path.stem.startswith(t + "_")), path.stem)
            grouped.setdefault(owner, []).append(path)
    yield from grouped.items()


def loss(files: list[Path], docs: Path) -> str | None:
    """Why replacing these files' namesakes in ``docs`` would lose runs; None when it would not."""
    for path in files:
        old = docs / path.name
        if not old.is_file():
            continue
        if path.suffix == ".md":
            lost = fewer_runs(old.read_text(), path.read_text())
            if lost:
                return lost
        elif path.suffix == ".json":
            before, after = numbers(json.loads(old.read_text())), numbers(json.loads(path.read_text()))
            if after < before:
                return f"{path.name}: {before} numbers -> {after}"
    return None


def publish(staging: Path, docs: Path, replace: bool = False) -> tuple[list[Path], list[str]]:
    """Move the staged reports into ``docs``, except the groups that would lose runs (all of them when
    ``replace``); the paths written and one line per group kept."""
    docs.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for name, files in groups(staging):
        lost = None if replace else loss(files, docs)
        if lost:
            kept.append(f"kept {docs / name}.* as it was: it shows runs this report has not ({lost})")
            continue
        for path in files:
            written.append(Path(shutil.move(str(path), docs / path.name)))
    return written, kept
