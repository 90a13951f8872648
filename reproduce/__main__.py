"""``python -m reproduce``: every table and figure of docs/reproduction.md, from the runs to the files.

    python -m reproduce --budget full --jobs 2                   # the CPU-scale study (hours); resumable
    python -m reproduce --paper vcreg --seeds 0 --budget tiny --data-root DIR --runs R --docs D   # a smoke run
    python -m reproduce --report-only                            # tables and figures from the runs so far

Runs go to ``--runs/<paper>/<run>_s<seed>``; a job whose result exists (same command) is skipped, so an
interrupted study continues. Then each paper's tables (``<docs>/<paper>_*.md``) and figures (``.png`` beside
them) are written from whatever has finished, and ``<docs>/cpu_time.md`` sums the CPU time per study of every
paper (with ``--paper``, too). Exit code 0 when every job finished, 1 when one failed (its log is named), 2 on a
bad argument.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from reproduce import msbreg, msbreg_report, stochcon, stochcon_report, vcreg, vcreg_report
from reproduce.context import BUDGETS, Context
from reproduce.cpu_time import write_cpu_time
from reproduce.driver import run_jobs

PAPERS = {"stochcon": (stochcon.jobs, stochcon_report.report), "msbreg": (msbreg.jobs, msbreg_report.report),
          "vcreg": (vcreg.jobs, vcreg_report.report)}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.split("\n")[0])
    top.add_argument("--paper", choices=[*PAPERS, "all"], default="all")
    top.add_argument("--budget", choices=BUDGETS, default="full",
                     help="full: the CPU-scale study on Fashion-MNIST | tiny: every job for a few steps")
    top.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    top.add_argument("--runs", type=Path, default=Path("runs/reproduce"), help="run folders")
    top.add_argument("--docs", type=Path, default=Path("docs/reproduction"), help="generated tables and figures")
    top.add_argument("--data-root", default=None,
                     help="Fashion-MNIST IDX files (default: the loader's search, /usr/share/datasets/fashion-mnist)")
    top.add_argument("--jobs", type=int, default=1,
                     help="jobs at once, each its own process (1: one after another inside this process)")
    top.add_argument("--threads", type=int, default=None,
                     help="threads per job (default: 2 // jobs, at least 1: the study's 2-core machine)")
    top.add_argument("--report-only", action="store_true", help="write the tables and figures, run nothing")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        print("error: --jobs and --threads must be at least 1", file=sys.stderr)
        return 2
    ctx = Context(args.budget, sorted(set(args.seeds)), args.runs.resolve(), args.docs, args.data_root)
    papers = list(PAPERS) if args.paper == "all" else [args.paper]
    jobs = [job for paper in papers for job in PAPERS[paper][0](ctx)]
    code = 0
    if not args.report_only:
        outcome = run_jobs(jobs, args.jobs, args.threads or max(1, 2 // args.jobs),
                           say=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
        code = 1 if outcome.failed or outcome.blocked else 0
        print(f"{len(outcome.finished)} finished, {len(outcome.skipped)} already done, "
              f"{len(outcome.failed)} failed, {len(outcome.blocked)} blocked")
    every_paper = "python -m reproduce " + " ".join(["--budget", args.budget, "--seeds", *map(str, ctx.seeds)])
    command = every_paper + ("" if args.paper == "all" else f" --paper {args.paper}")
    for paper in papers:
        for path in PAPERS[paper][1](ctx, command):
            print(f"wrote {path}")
    # every paper's jobs, whichever ran now: the file is the whole study's account
    every_job = [job for make_jobs, _ in PAPERS.values() for job in make_jobs(ctx)]
    print(f"wrote {write_cpu_time(ctx, every_job, ctx.docs / 'cpu_time.md', every_paper + ' --report-only')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
