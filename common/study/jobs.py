"""Running a study's jobs: every training run, evaluation and analysis is one ``Job``, a call of a project
command's own ``main(argv)`` (``stochcon.train``, ``vcreg.train``, ``stochcon.finetune``, ``python -m
evaluation``, the analyses).

A job's identity is what it computes: for a command that resolves a config (``configured``: the trainers,
fine-tuning, evaluation protocols) the config its ``--print-identity`` prints, less the keys that cannot change a
result (``common.checkpoint.RESUMABLE_KEYS``: output folder, resume, logging...), with the command's module; a
key added to the code since a job ran counts as absent while it holds the value runs computed before it
existed (``same_identity``), and a key renamed since is read under its new name (``recorded_as``), so an upgrade
that adds or renames a key reruns nothing;
for any other command its module and arguments. A job is finished when its ``done`` file exists and the
``reproduce.json`` beside it records the same identity and the same finished inputs (the jobs it needs); a
rerun skips it, so an interrupted study continues where it stopped (a trainer started with ``resume=auto``
continues its own latest checkpoint), and a recipe moved from ``key=value`` arguments into a YAML file that
resolves to the same config is still done. A job whose folder holds anything else (another command's run,
finished or not, or files the study did not write) is moved aside to ``<folder>.replaced-<time>`` and started
in an empty folder: nothing is deleted. The runner's own files of a job (``reproduce.json``, the log, the
identity it started under) are kept beside its folder, in ``<folder>.job/``, since a trainer refuses a folder
holding files it did not write. ``reproduce.json`` also holds the job's CPU time (user + system of its process,
every thread), wall time and the machine that ran it (CPU model, Python, torch).

With ``jobs=1`` every job runs inside this process (no interpreter start per job: the tiny budget's test);
with more, each job is a subprocess (``python -m common.study.worker``) and ``jobs`` of them run at once,
the first ready job of the ordered list first. SIGTERM or SIGUSR1 stops the study: the running jobs get the
signal (a trainer saves a checkpoint and exits 75), they are recorded as stopped, not failed, and no other job
starts; the next run resumes them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.checkpoint import RESUMABLE_KEYS
from common.config import PRINT_IDENTITY_FLAG, UPGRADE_CONFIG_FLAG
from common.config_upgrade import without_values_before_added_keys
from common.errors import EXIT_PREEMPTED, ConfigError

RECORD = "reproduce.json"
STARTED = "reproduce.started.json"  # the identity a job was started with (an interrupted job resumes only under it)
LOG = "reproduce.log"
RESTORED = "restored.json"  # beside the record of a job copied from the archive (common.study.archive)
RECOMPUTES = "reproduce.recomputes.json"  # a restored job run again for its checkpoint: the record it recomputes
ROOT = Path(__file__).resolve().parents[2]  # where the project's packages are imported from
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Job:
    name: str  # unique: "<paper>/<run>", also the folder under the runs directory
    module: str  # the command: a module whose ``main(argv)`` runs it (``package.__main__`` for a package)
    argv: list[str]
    folder: Path  # the job's folder (a trainer's output_dir)
    done: Path  # the file the command writes last
    study: str  # the table or figure the job belongs to (CPU time is summed per study)
    needs: tuple[str, ...] = ()  # jobs that must finish first
    tier: int = 0  # order: main comparisons (0) before the variants around them (1)
    configured: bool = False  # the command answers --print-identity: its identity is the config it resolves

    @property
    def runs(self) -> Path:
        """The runs folder this job's folder lies in (``folder`` is ``<runs>/<name>``)."""
        return self.folder.parents[len(Path(self.name).parts) - 1]

    @property
    def restored(self) -> bool:
        """Copied from the archive: its results are here, its checkpoints are not."""
        return (self.state / RESTORED).is_file()

    @property
    def state(self) -> Path:
        """The runner's files of this job (record, log, identity started under), beside its folder."""
        return self.folder.with_name(f"{self.folder.name}.job")


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_record(job: Job) -> dict | None:
    path = job.state / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def main_of(module: str):
    loaded = importlib.import_module(module)
    if not hasattr(loaded, "main"):
        loaded = importlib.import_module(f"{module}.__main__")
    return loaded.main


def without_keys(config: dict, dotted: set[str], prefix: str = "") -> dict:
    """``config`` less the ``dotted`` keys (``data.root``), at any depth."""
    return {key: without_keys(value, dotted, f"{prefix}{key}.") if isinstance(value, dict) else value
            for key, value in config.items() if f"{prefix}{key}" not in dotted}


def portable(argv: Sequence[str], job: Job) -> list[str]:
    """``argv`` with the repository's and the runs folder's paths written ``<repo>`` and ``<runs>``: where a
    study runs does not change what it computes."""
    out = []
    for arg in argv:
        for folder, name in ((job.runs, "<runs>"), (ROOT, "<repo>")):
            arg = re.sub(rf"(^|=){re.escape(str(folder))}(?=/|$)", rf"\g<1>{name}", arg)
        out.append(arg)
    return out


def identity(job: Job) -> dict:
    """What ``job`` computes (see the module's docstring); a configured command whose config does not resolve is
    a ``ConfigError`` naming the job, before anything runs."""
    if not job.configured:
        return {"module": job.module, "argv": portable(job.argv, job)}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main_of(job.module)([*job.argv, PRINT_IDENTITY_FLAG])
    if code:
        raise ConfigError(f"job {job.name}: its config does not resolve: {err.getvalue().strip()}")
    printed = yaml.safe_load(out.getvalue())
    return {"module": job.module, "config": without_keys(printed["config"], RESUMABLE_KEYS),
            "keys_added": printed["keys_added"]}


def same_identity(saved: dict | None, current: dict) -> bool:
    """Whether a job recorded (or started) under ``saved`` computes what ``current`` computes: the same command
    and config, where a key added to the code since (``current["keys_added"]``: the value runs computed before
    it existed) counts as absent at that value, so a record written before the key still matches."""
    if saved is None or saved.get("module") != current["module"]:
        return False
    if "config" not in current:
        return saved == current
    before = current["keys_added"]
    return ("config" in saved and without_values_before_added_keys(saved["config"], before)
            == without_values_before_added_keys(current["config"], before))


def recorded_as(job: Job, saved: dict | None, current: dict) -> bool:
    """Whether ``job``'s record (or started file) ``saved`` has the identity ``current``: as it stands, or with the
    keys renamed since it was written upgraded by the job's own command (``--upgrade-config``), so that a rename
    reruns no finished job either."""
    if same_identity(saved, current):
        return True
    if not job.configured and saved is not None and isinstance(saved.get("argv"), list):
        return same_identity({**saved, "argv": portable(saved["argv"], job)}, current)  # written before <runs>
    if (not job.configured or saved is None or saved.get("module") != current["module"]
            or not isinstance(saved.get("config"), dict)):
        return False
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main_of(job.module)([*job.argv, UPGRADE_CONFIG_FLAG, json.dumps(saved["config"])])
    return code == 0 and same_identity({**saved, "config": json.loads(out.getvalue())}, current)


def _inputs(job: Job, records: dict[str, dict]) -> dict[str, float]:
    return {name: records[name]["finished_at"] for name in job.needs}


def is_finished(job: Job, ident: dict, records: dict[str, dict]) -> bool:
    """Done with this identity, after the jobs it needs finished as they are now."""
    record = read_record(job)
    return (job.done.is_file() and record is not None and recorded_as(job, record.get("identity"), ident)
            and all(n in records for n in job.needs) and record.get("inputs") == _inputs(job, records))


def machine() -> dict[str, str]:
    """What ran a job: the same seed on another CPU model or torch build is another run (float reductions differ,
    and training amplifies the difference), so a record says where it was made."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "python": platform.python_version(), "torch": torch.__version__}


def execute(module: str, argv: Sequence[str], state: Path, inputs: dict[str, float]) -> int:
    """Run one command in this process, its output into ``state/reproduce.log``; on success write
    ``state/reproduce.json`` (command, identity, inputs, CPU and wall seconds). The exit code."""
    state.mkdir(parents=True, exist_ok=True)
    cpu, wall = _process_cpu_seconds(), time.perf_counter()
    with open(state / LOG, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ python -m {module} {' '.join(argv)}", flush=True)
        code = main_of(module)(list(argv))
    code = code or 0
    if code == 0:
        # a restored job run again to recompute its checkpoint keeps its record's time: the jobs that read its
        # output stay finished (same identity, same result)
        recomputes = state / RECOMPUTES
        finished_at = json.loads(recomputes.read_text())["finished_at"] if recomputes.is_file() else time.time()
        record = {"module": module, "argv": list(argv), "identity": json.loads((state / STARTED).read_text()),
                  "inputs": inputs, "cpu_seconds": round(_process_cpu_seconds() - cpu, 2),
                  "wall_seconds": round(time.perf_counter() - wall, 2), "finished_at": finished_at,
                  "machine": machine()}
        (state / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return code


def _worker_command(job: Job, inputs: dict[str, float]) -> list[str]:
    return [sys.executable, "-m", "common.study.worker", "--module", job.module, "--state", str(job.state),
            "--inputs", json.dumps(inputs), "--", *job.argv]


def move_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``<folder>.replaced-<time>`` (a free name), never deleting anything. The new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.replaced-{stamp}")
    count = 1
    while target.exists():
        count += 1
        target = folder.with_name(f"{folder.name}.replaced-{stamp}-{count}")
    return folder.rename(target)


def _prepare(job: Job, ident: dict, say, recomputes: dict | None = None) -> None:
    """A job interrupted under this identity keeps its folder (a trainer's checkpoints: resume=auto); a folder
    that holds anything else (a finished run, a run of another command, files of someone else) is moved aside,
    with the runner's files of it. ``recomputes``: the record of the restored job this run computes again."""
    started = job.state / STARTED
    same = started.is_file() and recorded_as(job, json.loads(started.read_text()), ident)
    if not same or job.done.is_file() or read_record(job) is not None:
        for folder in (job.folder, job.state):
            if folder.is_dir() and any(folder.iterdir()):
                say(f"moved  {folder} aside to {move_aside(folder)}")
    job.state.mkdir(parents=True, exist_ok=True)
    job.folder.mkdir(parents=True, exist_ok=True)  # empty: a trainer starts in it, a command writes its output there
    started.write_text(json.dumps(ident) + "\n")
    if recomputes is not None:
        (job.state / RECOMPUTES).write_text(json.dumps({"finished_at": recomputes["finished_at"]}) + "\n")


def restored_needed(order: list[Job], pending: list[Job], records: dict[str, dict]) -> list[Job]:
    """The restored jobs that a job to run needs, and the restored jobs those need: the archive kept their
    results, not their checkpoints, so they run again (recomputing their records: ``RECOMPUTES``)."""
    again: list[Job] = []
    running = {job.name for job in pending}
    by_name = {job.name: job for job in order}
    stack = list(pending)
    while stack:
        for name in stack.pop().needs:
            need = by_name.get(name)
            if need is not None and name not in running and name in records and need.restored:
                running.add(name)
                again.append(need)
                stack.append(need)
    return again


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # a job it needs failed
    stopped: list[str] = field(default_factory=list)  # interrupted by SIGTERM/SIGUSR1: the next run resumes them
    not_started: list[str] = field(default_factory=list)  # left when a signal stopped the study


def run_jobs(jobs: list[Job], parallel: int, threads: int, say=print) -> Outcome:
    """Run every unfinished job (tier, then list order), ``parallel`` at once with ``threads`` threads each,
    until every job has run or a SIGTERM/SIGUSR1 stops the study."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    order = sorted(jobs, key=lambda job: job.tier)
    identities = {job.name: identity(job) for job in order}  # every config resolves before anything runs
    outcome = Outcome()
    records: dict[str, dict] = {}
    pending = []
    for job in order:  # jobs come after the jobs they need, so one pass settles what is finished
        if is_finished(job, identities[job.name], records):
            records[job.name] = read_record(job)
            outcome.skipped.append(job.name)
        else:
            pending.append(job)
    recomputed = {}
    for job in restored_needed(order, pending, records):
        recomputed[job.name] = records.pop(job.name)
        outcome.skipped.remove(job.name)
        pending.append(job)
    pending.sort(key=order.index)
    say(f"{len(outcome.skipped)} jobs already done, {len(pending)} to run")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    failed: set[str] = set()
    stop: list[int] = []  # the stop signals received

    def on_signal(signum, frame) -> None:
        stop.append(signum)
        for _, process in running.values():  # each job stops as it would alone (a trainer: checkpoint, 75)
            process.send_signal(signum)

    def ready(job: Job) -> bool:
        return all(n in records for n in job.needs)

    def settle(job: Job, code: int) -> None:
        record = read_record(job)
        if code == 0 and job.done.is_file() and record is not None:
            records[job.name] = record
            outcome.finished.append(job.name)
            say(f"done   {job.name}  ({record['cpu_seconds']:.0f} CPU s, {record['wall_seconds']:.0f} s)")
        elif code == EXIT_PREEMPTED or (stop and -code in STOP_SIGNALS):
            if not stop:  # a job run in this process received the signal itself
                stop.append(signal.SIGTERM)
            outcome.stopped.append(job.name)
            say(f"stopped {job.name} (exit {code}): the next run resumes it")
        else:
            failed.add(job.name)
            outcome.failed.append(job.name)
            say(f"FAILED {job.name} (exit {code}); log: {job.state / LOG}")

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        if parallel <= 1:
            import torch

            torch.set_num_threads(threads)
        while (pending and not stop) or running:
            for job in [j for j in pending if any(n in failed or n in outcome.blocked for n in j.needs)]:
                pending.remove(job)
                outcome.blocked.append(job.name)
                say(f"blocked {job.name}: a job it needs failed")
            while pending and not stop and len(running) < max(parallel, 1):
                job = next((j for j in pending if ready(j)), None)
                if job is None:
                    break
                pending.remove(job)
                _prepare(job, identities[job.name], say, recomputed.get(job.name))
                say(f"start  {job.name}")
                if parallel <= 1:
                    code = execute(job.module, job.argv, job.state, _inputs(job, records))
                    for signum in STOP_SIGNALS:  # a trainer run here installed its own handlers
                        signal.signal(signum, on_signal)
                    settle(job, code)
                    continue
                with open(job.state / LOG, "a") as log:  # tracebacks and C-level output too
                    process = subprocess.Popen(_worker_command(job, _inputs(job, records)), cwd=ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
                running[job.name] = (job, process)
            if not running:
                if pending and not stop:  # nothing runnable: what they need is missing
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
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop:
        outcome.not_started = [job.name for job in pending]
        say(f"stopped by signal {stop[0]}: {len(pending)} jobs not started; the same command resumes")
    return outcome
