"""Shared helpers of the benchmarks: interleaved rounds, quartiles, the machine, JSON output.

Every benchmark times its variants in interleaved rounds (variant A, B, C, then A, B, C again, the starting
variant rotating from round to round), so a change in the machine's load hits all variants alike; ratios are
taken within a round and summarised by their median and interquartile range over rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def quartiles(values: list[float]) -> dict[str, float]:
    """Median and interquartile range (a single value gives itself three times)."""
    if len(values) > 1:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = median = q3 = values[0]
    return {"median": median, "q25": q1, "q75": q3}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int, repeat: int = 1,
                device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of every function, one measurement per round (the mean of ``repeat`` calls).

    Round ``r`` starts at variant ``r mod len(fns)``; the first ``warmup`` rounds are not kept. On a GPU the
    clock stops after the device has finished the queued work (kernels run asynchronously).
    """
    names = list(fns)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeat):
                fns[name]()
            synchronize(device)
            elapsed = (time.perf_counter() - start) / repeat
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ratios(seconds: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-round ratios ``numerator / denominator``."""
    return [a / b for a, b in zip(seconds[numerator], seconds[denominator])]


def set_threads(threads: int | None, quick: bool) -> int | None:
    """Set torch's thread count; ``--quick`` (a test) takes one thread so as not to fight other tests for cores."""
    threads = threads or (1 if quick else None)
    if threads:
        torch.set_num_threads(threads)
    return threads


def machine(device: str = "cpu") -> dict:
    """What the figures were measured on."""
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {"benchmark": Path(sys.argv[0]).stem, "device": device, "gpu": gpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}


def write_json(path: str | Path, setup: dict, results) -> Path:
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    print(f"wrote {output}")
    return output


def fmt(q: dict[str, float], digits: int = 3) -> str:
    """``median [q25-q75]``."""
    return f"{q['median']:.{digits}f} [{q['q25']:.{digits}f}-{q['q75']:.{digits}f}]"
