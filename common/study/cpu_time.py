"""CPU time of the study: user + system seconds of every finished job (its ``reproduce.json``), summed per
study, with the longest job's CPU and wall time."""

from __future__ import annotations

from pathlib import Path

from common.study.context import Context
from common.study.jobs import Job, read_record
from common.study.report import write_table


def write_cpu_time(ctx: Context, jobs: list[Job], path: Path, command: str) -> Path:
    studies: dict[str, list[dict]] = {}
    expected: dict[str, int] = {}
    for job in jobs:
        key = f"{job.name.split('/')[0]} {job.study}"
        expected[key] = expected.get(key, 0) + 1
        record = read_record(job) if job.done.is_file() else None
        if record is not None:
            studies.setdefault(key, []).append(record)
    rows = []
    total = 0.0
    for key, count in expected.items():
        records = studies.get(key, [])
        cpu = sum(r["cpu_seconds"] for r in records)
        total += cpu
        longest = max(records, key=lambda r: r["cpu_seconds"], default=None)
        rows.append([key, f"{len(records)} of {count}", f"{cpu / 60:.1f}", f"{cpu / 60 / max(1, len(records)):.1f}",
                     "—" if longest is None else
                     f"{longest['cpu_seconds'] / 60:.1f} ({longest['wall_seconds'] / 60:.1f})"])
    rows.append(["**total**", f"{sum(len(v) for v in studies.values())} of {sum(expected.values())}",
                 f"**{total / 60:.1f}** ({total / 3600:.2f} h)", "", ""])
    notes = (f"Budget `{ctx.budget}`, seeds {', '.join(map(str, ctx.seeds))}. CPU minutes are user + system time "
             "of each job's process (every thread), measured by the job itself; wall minutes were measured on "
             "a shared machine, so they bound what an idle one needs.")
    return write_table(path, "CPU time per study", ["paper, study", "jobs finished", "CPU min", "CPU min per job",
                                                    "longest job: CPU min (wall min)"], rows, notes, command)
