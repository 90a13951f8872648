"""What every paper's study needs to describe its jobs: the budget, the seeds, where runs and documents go, and
the settings every training run shares at each budget. Runs of each budget have their own folder
(``<runs>/<budget>``), so a tiny smoke run never touches a full study's runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from common.study.jobs import LOG, ROOT, Job

# common.trainer's NonFiniteLossError, as the driver's log of a failed run holds it
NON_FINITE = re.compile(r"non-finite loss at step (\d+)")

BUDGETS = ("full", "tiny")


def config_path(relative: str) -> str:
    """A config of the repository (``vcreg/configs/...``) as an absolute path, whatever the current folder."""
    return str(ROOT / relative)


@dataclass
class Context:
    budget: str  # full: the CPU-scale study on Fashion-MNIST | tiny: every job for a few steps (tests)
    seeds: list[int]
    runs: Path  # this budget's run folders: <runs>/<paper>/<job> (the command's --runs/<budget>)
    docs: Path  # generated tables and figures
    data_root: str | None = None  # Fashion-MNIST's IDX files; None: the loader's own search (Debian's copy)

    @property
    def tiny(self) -> bool:
        return self.budget == "tiny"

    def pick(self, full, tiny):
        """The full budget's value or the tiny one's."""
        return tiny if self.tiny else full

    def data_args(self) -> list[str]:
        return [f"data.root={self.data_root}"] if self.data_root else []

    def trainer_args(self, folder: Path, seed: int) -> list[str]:
        """Every training run: its folder and seed, quiet, resumable, no loader workers (2 shared cores)."""
        return [f"output_dir={folder}", f"seed={seed}", "resume=auto", "progress_bar=false", "tracker=none",
                "data.num_workers=0"]

    def tiny_trainer_args(self, subset: int | None = 256) -> list[str]:
        """A few steps of a small batch, a small k-NN bank and a one-epoch probe (``--budget tiny``); every step
        logged, so that the curves a report draws have points."""
        if not self.tiny:
            return []
        return ["max_steps=2", "batch_size=64", "log_every_steps=1", *([f"data.subset={subset}"] if subset else []),
                "eval.max_train_images=200", "eval.max_test_images=200", "eval.linear_epochs=1", "eval.batch_size=256"]


def trainer_job(ctx: Context, paper: str, name: str, study: str, module: str, args: list[str], seed: int,
                tier: int = 0, needs: tuple[str, ...] = ()) -> Job:
    """A training run (``results.json`` marks it done) in ``<runs>/<paper>/<name>_s<seed>``."""
    run = f"{name}_s{seed}"
    folder = ctx.runs / paper / run
    # the data root first: a run's own data.root (an image folder) comes later and wins
    return Job(name=f"{paper}/{run}", module=module, argv=[*ctx.data_args(), *args, *ctx.trainer_args(folder, seed)],
               folder=folder, done=folder / "results.json", study=study, needs=needs, tier=tier, configured=True)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def results_per_seed(ctx: Context, paper: str, run: str, key: str) -> dict[int, float]:
    """``{seed: results[key]}`` of ``<runs>/<paper>/<run>_s<seed>/results.json`` over the seeds that have it."""
    out = {}
    for seed in ctx.seeds:
        results = read_json(ctx.runs / paper / f"{run}_s{seed}" / "results.json")
        if results is not None and key in results:
            out[seed] = float(results[key])
    return out


def diverged_at(ctx: Context, paper: str, run: str) -> dict[int, int]:
    """``{seed: step}`` of the seeds whose ``<runs>/<paper>/<run>_s<seed>`` stopped on a non-finite loss, so that a
    table says "diverged" where it would say "not run"."""
    out = {}
    for seed in ctx.seeds:
        log = ctx.runs / paper / f"{run}_s{seed}.job" / LOG
        found = NON_FINITE.search(log.read_text(errors="replace")) if log.is_file() else None
        if found:
            out[seed] = int(found.group(1))
    return out


def evaluation_per_seed(ctx: Context, paper: str, run: str, job: str, file: str, read) -> dict[int, float]:
    """``{seed: read(json)}`` of ``<runs>/<paper>/<run>_s<seed>_<job>/<file>``, written by an evaluation of a run,
    over the seeds that have it."""
    out = {}
    for seed in ctx.seeds:
        data = read_json(ctx.runs / paper / f"{run}_s{seed}_{job}" / file)
        if data:
            out[seed] = float(read(data))
    return out
