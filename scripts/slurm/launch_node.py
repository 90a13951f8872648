"""One node's share of a multi-node run: ``accelerate launch`` with this node's machine rank, read from the
scheduler's environment, and the trainers' exit codes passed on (75 preempted, 2 bad input).

    python scripts/slurm/launch_node.py [--dry-run] <trainer.py> [trainer arguments ...]

``scripts/slurm/train.sbatch`` runs it once per node through ``srun``. It reads
  SLURM_NNODES     the number of machines
  SLURM_NODEID     this machine's rank (0 on the first host of the node list, which serves the rendezvous)
  MAIN_ADDR        the first host of the node list (the sbatch script sets it from ``scontrol show hostnames``)
  MAIN_PORT        the rendezvous port on that host
  GPUS_PER_NODE    processes per node; if unset, Slurm's SLURM_GPUS_ON_NODE or SLURM_GPUS_PER_NODE
and ``--dry-run`` prints the command instead of running it.

Why a Python wrapper rather than ``accelerate launch`` itself:
- ``accelerate launch`` (torchrun underneath) exits 1 whatever its processes' codes were, so a preempted run
  (every process exits 75) would look like a crash. Run in this process, its launcher raises with every
  process's code, and this node exits 75 when all of them did (``common.errors.EXIT_PREEMPTED``), 2 when all
  gave bad input.
- Slurm delivers the warning signal (``--signal=USR1@T``) to every process of the job step: the training
  processes, which save and stop, and this launcher, which SIGUSR1 would kill (its default action) and take
  its processes down with it before they saved. The launcher ignores SIGUSR1; its processes inherit that until
  the trainer installs its own handler at the start of ``Trainer.fit``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository's packages, not this folder's modules

from common.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, ConfigError

USAGE = "usage: python scripts/slurm/launch_node.py [--dry-run] <trainer.py> [trainer arguments ...]"


def environment_int(env: dict[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number (run inside a Slurm job through "
                          "scripts/slurm/train.sbatch, or set it)") from None


def gpus_per_node(env: dict[str, str]) -> int:
    """GPUS_PER_NODE, else what Slurm set: SLURM_GPUS_ON_NODE (a count) or SLURM_GPUS_PER_NODE ([type:]count)."""
    for name in ("GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if env.get(name):
            count = env[name].rsplit(":", 1)[-1]
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"{name}={env[name]!r} is not a GPU count")
            return int(count)
    raise ConfigError("no GPU count: submit with --gpus-per-node=G (or set GPUS_PER_NODE)")


def accelerate_arguments(env: dict[str, str], trainer: list[str]) -> list[str]:
    """The arguments of ``accelerate launch`` for this node: ``trainer`` is the script and its arguments."""
    machines, rank = environment_int(env, "SLURM_NNODES"), environment_int(env, "SLURM_NODEID")
    if machines < 1 or not 0 <= rank < machines:
        raise ConfigError(f"SLURM_NODEID={rank} is not a machine rank of SLURM_NNODES={machines} machines")
    processes = machines * gpus_per_node(env)
    # set here so that an accelerate config file (accelerate config) cannot change them; the trainer asks for
    # its mixed precision itself (the config key mixed_precision) and compiles with compile=true
    fixed = ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes == 1:
        return ["--num_processes", "1", "--num_machines", "1", *fixed, *trainer]
    for name in ("MAIN_ADDR", "MAIN_PORT"):
        if not env.get(name):
            raise ConfigError(f"{name} is not set (scripts/slurm/train.sbatch sets it)")
    return ["--multi_gpu", "--num_machines", str(machines), "--machine_rank", str(rank),
            "--main_process_ip", env["MAIN_ADDR"], "--main_process_port", env["MAIN_PORT"],
            "--num_processes", str(processes), *fixed, *trainer]


def common_exit_code(codes: list[int]) -> int | None:
    """75 (preempted) or 2 (bad input) when some process exited with it and every other one that failed did too
    or was killed by a signal (a negative code); None for anything else, a crash. Once one process has ended, the
    launcher stops the others (SIGTERM, SIGKILL 30 s later): a 75 anywhere means that every rank agreed to stop
    and the checkpoint was written before any process exited, however the slower ones ended."""
    for code in (EXIT_PREEMPTED, EXIT_BAD_INPUT):
        if code in codes and all(c == code or c < 0 for c in codes):
            return code
    return None


def launch(arguments: list[str]) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(arguments)
    try:
        launch_command(args)
        return 0
    except ChildFailedError as error:  # several processes (torchrun): every failed rank with its code
        code = common_exit_code([failure.exitcode for failure in error.failures.values()])
        if code is None:
            raise
    except subprocess.CalledProcessError as error:  # one process
        code = common_exit_code([error.returncode])
        if code is None:
            raise
    print(f"launch_node: the training processes of this node exited {code}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    dry_run = bool(argv) and argv[0] == "--dry-run"
    trainer = argv[1:] if dry_run else argv
    if not trainer or trainer[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        arguments = accelerate_arguments(dict(os.environ), trainer)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if dry_run:
        print(shlex.join(["accelerate", "launch", *arguments]))
        return 0
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return launch(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
