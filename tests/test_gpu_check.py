"""scripts/gpu_check.sh runs its parts end to end with --quick (CPU, tiny sizes), and the batch search of
bench/gpu_check.py keeps the last batch that fitted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_batch_search_doubles_until_out_of_memory_and_keeps_the_last_that_fitted(monkeypatch):
    built = []

    class FakeStep:  # a run whose memory holds 8 images
        def __init__(self, check, overrides, batch, device):
            built.append(batch)
            if batch > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        def __call__(self):
            return torch.tensor(1.0)

    def search(limit: int, deadline: float):
        built.clear()
        return gpu_check.largest_batch(gpu_check.CHECKS[0], (), torch.device("cpu"), start=2, limit=limit,
                                       deadline=deadline, trial_steps=1, measured_steps=50)

    monkeypatch.setattr(gpu_check, "TrainStep", FakeStep)
    best, tried, stopped = search(1024, math.inf)
    assert (best, stopped, built) == (8, "out of memory", [2, 4, 8, 16])
    assert [(t["batch"], t["fits"]) for t in tried] == [(2, True), (4, True), (8, True), (16, False)]
    assert search(4, math.inf)[::2] == (4, "max batch") and built == [2, 4]
    assert search(1024, time.monotonic() - 1)[::2] == (2, "time") and built == [2]  # no time for a next trial


def test_quick_gpu_check_runs_every_part(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--quick", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for part in ("part 1", "part 2", "part 3", "part 4"):
        assert f"-- {part}" in result.stdout and "exit status 0" in result.stdout
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert [row["check"] for row in rows] == [check.name for check in gpu_check.CHECKS]
    for row in rows:
        assert "error" not in row and row["finite_loss"], row
        assert row["images_per_second"] > 0 and math.isfinite(row["last_loss"])
    by_name = {row["check"]: row for row in rows}
    assert by_name["vcreg_fp16"]["batch"] == by_name["vcreg"]["batch"]
    assert by_name["stochcon"]["views"][0] == [3, 64, 64] and by_name["stochcon"]["views"][-1] == [3, 32, 32]
    assert len(by_name["msbreg"]["views"]) == 4
    for name in ("switches.json", "vcreg_overhead.json", "trainer_throughput.json"):
        assert json.loads((tmp_path / name).read_text())["setup"]["quick"] is True
