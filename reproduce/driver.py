"""Running the study's jobs: every training run, evaluation and analysis is one ``Job``, a call of a project
command's own ``main(argv)`` (``stochcon.train``, ``vcreg.train``, ``stochcon.finetune``, ``python -m
evaluation``, the analyses).

A job is finished when its ``done`` file exists and the ``reproduce.json`` beside it records the same command
and the same finished inputs (the jobs it needs); a regeneration skips it, so an interrupted study continues
where it stopped (a trainer started with ``resume=auto`` continues its own latest checkpoint). A job whose
command changed is run again from an empty folder. ``reproduce.json`` also holds the job's CPU time (user +
system of its process, every thread) and wall time.

With ``jobs=1`` every job runs inside this process (no interpreter start per job: the tiny budget's test);
with more, each job is a subprocess (``python -m reproduce.worker``) and ``jobs`` of them run at once,
the first ready job of the ordered list first.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RECORD = "reproduce.json"
STARTED = "reproduce.started.json"  # the command a job was started with (an interrupted job resumes only under it)
LOG = "reproduce.log"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    name: str  # unique: "<study>/<run>", also the folder under the runs directory
    module: str  # the command: a module whose ``main(argv)`` runs it (``package.__main__`` for a package)
    argv: list[str]
    folder: Path  # the job's folder (a trainer's output_dir); reproduce.json and reproduce.log go here
    done: Path  # the file the command writes last
    study: str  # the table or figure the job belongs to (CPU time is summed per study)
    needs: tuple[str, ...] = ()  # jobs that must finish first
    tier: int = 0  # order: main comparisons (0) before the variants around them (1)


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_record(job: Job) -> dict | None:
    path = job.folder / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _inputs(job: Job, records: dict[str, dict]) -> dict[str, float]:
    return {name: records[name]["finished_at"] for name in job.needs}


def is_finished(job: Job, records: dict[str, dict]) -> bool:
    """Done with this command, after the jobs it needs finished as they are now."""
    record = read_record(job)
    return (job.done.is_file() and record is not None and record.get("module") == job.module
            and record.get("argv") == job.argv and all(n in records for n in job.needs)
            and record.get("inputs") == _inputs(job, records))


def _main_of(module: str):
    loaded = importlib.import_module(module)
    if not hasattr(loaded, "main"):
        loaded = importlib.import_module(f"{module}.__main__")
    return loaded.main


def execute(module: str, argv: Sequence[str], folder: Path, inputs: dict[str, float]) -> int:
    """Run one command in this process, its output into ``folder/reproduce.log``; on success write
    ``reproduce.json`` (command, inputs, CPU and wall seconds). The exit code."""
    folder.mkdir(parents=True, exist_ok=True)
    cpu, wall = _process_cpu_seconds(), time.perf_counter()
    with open(folder / LOG, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ python -m {module} {' '.join(argv)}", flush=True)
        code = _main_of(module)(list(argv))
    code = code or 0
    if code == 0:
        record = {"module": module, "argv": list(argv), "inputs": inputs,
                  "cpu_seconds": round(_process_cpu_seconds() - cpu, 2),
                  "wall_seconds": round(time.perf_counter() - wall, 2), "finished_at": time.time()}
        (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return code


def _worker_command(job: Job, inputs: dict[str, float]) -> list[str]:
    return [sys.executable, "-m", "reproduce.worker", "--module", job.module, "--folder", str(job.folder),
            "--inputs", json.dumps(inputs), "--", *job.argv]


def _prepare(job: Job) -> None:
    """A job that finished before, or was started under another command, starts again from an empty folder;
    one interrupted under this command keeps its folder (a trainer's checkpoints: resume=auto)."""
    started = job.folder / STARTED
    same_command = started.is_file() and json.loads(started.read_text()) == [job.module, *job.argv]
    if job.folder.exists() and (job.done.is_file() or read_record(job) is not None or not same_command):
        shutil.rmtree(job.folder)
    job.folder.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps([job.module, *job.argv]) + "\n")


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # a job it needs failed


def run_jobs(jobs: list[Job], parallel: int, threads: int, say=print) -> Outcome:
    """Run every unfinished job (tier, then list order), ``parallel`` at once with ``threads`` threads each."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    order = sorted(jobs, key=lambda job: job.tier)
    outcome = Outcome()
    records: dict[str, dict] = {}
    pending = []
    for job in order:  # jobs come after the jobs they need, so one pass settles what is finished
        if is_finished(job, records):
            records[job.name] = read_record(job)
            outcome.skipped.append(job.name)
        else:
            pending.append(job)
    say(f"{len(outcome.skipped)} jobs already done, {len(pending)} to run")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    running: dict[str, tuple[Job, subprocess.Popen | None]] = {}
    failed: set[str] = set()

    def ready(job: Job) -> bool:
        return all(n in records for n in job.needs)

    def settle(job: Job, code: int) -> None:
        record = read_record(job)
        if code == 0 and job.done.is_file() and record is not None:
            records[job.name] = record
            outcome.finished.append(job.name)
            say(f"done   {job.name}  ({record['cpu_seconds']:.0f} CPU s, {record['wall_seconds']:.0f} s)")
        else:
            failed.add(job.name)
            outcome.failed.append(job.name)
            say(f"FAILED {job.name} (exit {code}); log: {job.folder / LOG}")

    if parallel <= 1:
        import torch

        torch.set_num_threads(threads)
    while pending or running:
        for job in [j for j in pending if any(n in failed or n in outcome.blocked for n in j.needs)]:
            pending.remove(job)
            outcome.blocked.append(job.name)
            say(f"blocked {job.name}: a job it needs failed")
        while pending and len(running) < max(parallel, 1):
            job = next((j for j in pending if ready(j)), None)
            if job is None:
                break
            pending.remove(job)
            _prepare(job)
            say(f"start  {job.name}")
            if parallel <= 1:
                settle(job, execute(job.module, job.argv, job.folder, _inputs(job, records)))
                continue
            with open(job.folder / LOG, "a") as log:  # tracebacks and C-level output too
                process = subprocess.Popen(_worker_command(job, _inputs(job, records)), cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
            running[job.name] = (job, process)
        if not running:
            if pending:  # nothing runnable: what they need is missing
                for job in pending:
                    outcome.blocked.append(job.name)
                    say(f"blocked {job.name}: needs {', '.join(n for n in job.needs if n not in records)}")
                pending.clear()
            break
        time.sleep(1.0)
        for name, (job, process) in list(running.items()):
            code = process.poll()
            if code is not None:
                del running[name]
                settle(job, code)
    return outcome
