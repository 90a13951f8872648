"""Helpers for tests that run a trainer as a user does: a subprocess, its exit code, its run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}


def run(script: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def launch(script: str, args: list[str], processes: int = 2,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a trainer on ``processes`` CPU processes (gloo) with ``accelerate launch``.

    ``accelerate launch --cpu --num_processes N`` starts a single process without MPI (accelerate 1.x), so
    the processes are started as for several GPUs and Accelerate is told to stay on the CPU.
    """
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / script),
         *args],
        check=False, cwd=ROOT, env={**env(), "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
        timeout=timeout)


def run_until_checkpoint(script: str, args: list[str], output_dir: Path, step: int, sig: int = signal.SIGKILL,
                         timeout: float = 600, wait: bool = True) -> subprocess.Popen:
    """Start a trainer and send ``sig`` once checkpoint ``step`` exists (mid-run, while it keeps training); then
    wait for it to end, unless ``wait`` is false (a SIGSTOP leaves it stopped, the caller ends it)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = output_dir / "checkpoints" / f"step_{step:08d}" / "state.pt"
    deadline = time.time() + timeout
    while not target.exists():
        if proc.poll() is not None:
            raise AssertionError(f"trainer ended before step {step}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint at step {step} after {timeout} s")
        time.sleep(0.05)
    proc.send_signal(sig)
    if wait:
        proc.wait(timeout=120)
    return proc


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def write_idx_fashion_mnist(root: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """A small Fashion-MNIST-format dataset (IDX files): class k is a bright square at a class position."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = 2 + 6 * (label // 4), 2 + 6 * (label % 4)
            images[i, r:r + 8, c:c + 8] = 220
        return images, labels

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make(n)
        (root / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes())
        (root / f"{split}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], ">i4").tobytes() + labels.tobytes())
    return root
