"""The study runner's command: every table and figure of docs/reproduction.md, from the runs to the files.

    python -m common.study --budget full --jobs 2          # every paper's CPU-scale study (hours); resumable
    python -m vcreg.study --budget full                    # one paper's (also stochcon.study, msbreg.study)
    python -m common.study --budget tiny --seeds 0 --data-root DIR   # a smoke run of every job
    python -m common.study --report-only                   # tables and figures from the runs so far

``ssl-reproduce`` is ``python -m common.study``. Runs go to ``<runs>/<budget>/<paper>/<run>_s<seed>`` (a tiny smoke
run never touches a full study's runs); a job whose result exists under the same identity (the config it
resolves, see ``common.study.jobs``) is skipped, so an interrupted study continues. Then each paper's tables
(``<docs>/<paper>_*.md``) and figures (``.png`` beside them) are written from whatever has finished, and
``<docs>/cpu_time.md`` sums the CPU time per study of every paper. The full budget restores finished jobs from
``docs/reproduction/records`` before it runs (every one of the chosen papers, also under ``--only``, since the
reports read them all) and saves them there after (``common.study.archive``; ``--archive``,
``--no-archive``), so its tables regenerate, and the study goes on, on any machine. ``--docs`` defaults to the repository's
``docs/reproduction`` for the full budget and to ``<runs>/tiny/reports`` for the tiny one (its numbers measure
nothing); a table there that shows runs the new one lacks is kept (``common.study.publish``, ``--replace-tables``). Exit code 0 when every job finished, 1 when one failed (its log is named), 2 on a bad argument, 75
when a SIGTERM/SIGUSR1 stopped the study (the same command resumes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import sys
import tempfile
import time
from pathlib import Path

from common.errors import EXIT_FAILED, EXIT_PREEMPTED
from common.study.archive import restore, save
from common.study.context import BUDGETS, Context
from common.study.cpu_time import write_cpu_time
from common.study.jobs import ROOT, Job, run_jobs
from common.study.publish import publish

PAPERS = ("stochcon", "msbreg", "vcreg")  # each paper's study is the package <paper>.study


def study(paper: str):
    """The paper's study module (``PAPER``, ``jobs(ctx)``, ``report(ctx, command)``), loaded by name: ``common``
    imports no paper."""
    return importlib.import_module(f"{paper}.study")


def parser(prog: str, papers: tuple[str, ...]) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if len(papers) > 1:
        top.add_argument("--paper", choices=[*papers, "all"], default="all")
    top.add_argument("--budget", choices=BUDGETS, default="full",
                     help="full: the CPU-scale study on Fashion-MNIST | tiny: every job for a few steps")
    top.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    top.add_argument("--runs", type=Path, default=Path("runs/reproduce"),
                     help="run folders, one folder per budget under it (<runs>/<budget>/<paper>/...)")
    top.add_argument("--docs", type=Path, default=None,
                     help="generated tables and figures (default: the repository's docs/reproduction for the full "
                          "budget, <runs>/tiny/reports for the tiny one)")
    top.add_argument("--archive", type=Path, default=None,
                     help="finished jobs' results kept with the repository, restored into <runs> before the study "
                          "and saved after it (default: the repository's docs/reproduction/records for the full "
                          "budget, none for the tiny one; common.study.archive)")
    top.add_argument("--no-archive", action="store_true", help="neither restore nor save an archive")
    top.add_argument("--data-root", default=None,
                     help="Fashion-MNIST IDX files (default: the loader's search, /usr/share/datasets/fashion-mnist)")
    top.add_argument("--jobs", type=int, default=1,
                     help="jobs at once, each its own process (1: one after another inside this process)")
    top.add_argument("--threads", type=int, default=None,
                     help="threads per job (default: 2 // jobs, at least 1: the study's 2-core machine)")
    top.add_argument("--only", nargs="+", default=None, metavar="GLOB",
                     help="run only the jobs whose name (<paper>/<run>_s<seed>) matches one of these shell patterns, "
                          "and the jobs they need (e.g. 'vcreg/table3_resnet32_*')")
    top.add_argument("--report-only", action="store_true", help="write the tables and figures, run nothing")
    top.add_argument("--replace-tables", action="store_true",
                     help="replace every table, also one that shows runs the new one has not (by default such a "
                          "table is kept, and named; common.study.publish)")
    return top


def selected(jobs: list[Job], patterns: list[str]) -> list[Job]:
    """The jobs whose name matches one of ``patterns`` (shell-style), and every job they need, in list order."""
    by_name = {job.name: job for job in jobs}
    wanted = {job.name for job in jobs if any(fnmatch.fnmatchcase(job.name, p) for p in patterns)}
    stack = list(wanted)
    while stack:
        for need in by_name[stack.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                stack.append(need)
    return [job for job in jobs if job.name in wanted]


def default_docs(budget: str, runs: Path) -> Path:
    """Where tables go without ``--docs``: only the full budget's replace the committed ones."""
    return ROOT / "docs" / "reproduction" if budget == "full" else runs / "reports"


def default_archive(args: argparse.Namespace) -> Path | None:
    if args.no_archive:
        return None
    return args.archive.resolve() if args.archive else (ROOT / "docs" / "reproduction" / "records" if args.budget == "full" else None)


def context(args: argparse.Namespace) -> Context:
    """The study's context from the command's arguments: this budget's runs under ``<runs>/<budget>``."""
    runs = (args.runs / args.budget).resolve()
    return Context(args.budget, sorted(set(args.seeds)), runs, args.docs or default_docs(args.budget, runs),
                   args.data_root)


def main(argv: list[str] | None = None, papers: tuple[str, ...] = PAPERS, prog: str = "python -m common.study"
         ) -> int:
    """Run ``papers``' studies (``--paper`` picks among them) and write their reports; the exit code."""
    args = parser(prog, papers).parse_args(argv)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        print("error: --jobs and --threads must be at least 1", file=sys.stderr)
        return 2
    ctx = context(args)
    chosen = papers if getattr(args, "paper", "all") == "all" else (args.paper,)
    every_chosen = [job for paper in chosen for job in study(paper).jobs(ctx)]
    jobs = selected(every_chosen, args.only) if args.only else every_chosen
    if args.only and not jobs:
        print(f"error: --only {' '.join(args.only)} matches no job", file=sys.stderr)
        return 2
    archive = default_archive(args)
    if archive is not None:  # every archived job, not only the selected ones: the reports read them all
        print(f"restored {len(restore(every_chosen, archive))} finished jobs from {archive}")
    code = 0
    outcome = None if args.report_only else run_jobs(
        jobs, args.jobs, args.threads or max(1, 2 // args.jobs),
        say=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    if archive is not None:  # a study cut short keeps what finished too, and so do runs made without an archive
        print(f"saved {len(save(jobs, archive))} finished jobs into {archive}")
    if outcome is not None:
        print(f"{len(outcome.finished)} finished, {len(outcome.skipped)} already done, "
              f"{len(outcome.failed)} failed, {len(outcome.blocked)} blocked, "
              f"{len(outcome.stopped) + len(outcome.not_started)} stopped")
        if outcome.stopped or outcome.not_started:
            return EXIT_PREEMPTED  # stopped by a signal: no report from a study cut short
        code = EXIT_FAILED if outcome.failed or outcome.blocked else 0
    seeds = ["--seeds", *map(str, ctx.seeds)]
    command = " ".join([prog, "--budget", args.budget, *seeds] + (
        [] if len(papers) == 1 or len(chosen) == len(papers) else ["--paper", *chosen]))
    with tempfile.TemporaryDirectory(prefix="study-reports-") as staging:
        staged = dataclasses.replace(ctx, docs=Path(staging))
        for paper in chosen:
            study(paper).report(staged, command)
        # every paper's jobs, whichever ran now: the file is the whole study's account
        every_job = [job for paper in PAPERS for job in study(paper).jobs(ctx)]
        every_paper = " ".join(["python -m common.study", "--budget", args.budget, *seeds, "--report-only"])
        write_cpu_time(staged, every_job, staged.docs / "cpu_time.md", every_paper)
        written, kept = publish(staged.docs, ctx.docs, replace=args.replace_tables)
    for path in written:
        print(f"wrote {path}")
    for line in kept:
        print(line)
    if kept:
        print("(--docs DIR writes every table elsewhere; --replace-tables replaces them anyway)")
    return code
