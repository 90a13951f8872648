"""Expand a sweep file into training runs: ``python -m common.sweep FILE [--run] [--launcher CMD]``.

A sweep file is YAML with these keys:

    train: msbreg/train.py                   # the trainer: a script relative to the repository root,
                                             # or a module name (msbreg.train)
    base: imagenet100_resnet18_msbreg.yaml   # the config every run starts from, relative to the sweep file
    output_root: runs/msbreg/table5          # every run writes to <output_root>/<run name>
    name: "k{augment.num_views}_ls{method.lambda_s}_lb{method.lambda_b}"   # run name, {dotted.key} = its value
    overrides:                               # optional: dotted key -> value, the same for every run
      epochs: 300
    grid:                                    # dotted key -> list of values; runs = the Cartesian product,
      augment.num_views: [2, 4, 8]           # the first key varying slowest
      method.lambda_s: [0, 0.002, 0.004, 0.01]

The trainer module is imported by name (``common`` imports no paper package statically) and must define
``CONFIG_SCHEMA``, its train config dataclass. Each run is
``<launcher> <train script> --config BASE key=value ... output_dir=<output_root>/<name>``; the default
launcher is this Python interpreter, ``--launcher "accelerate launch"`` (with e.g. ``--num_processes 8``)
runs on GPUs. Every expanded run is checked against ``CONFIG_SCHEMA`` before anything is printed or
launched, so a misspelt key fails at once. Without ``--run`` the commands are printed (a dry run); with it
they run one after the other and the sweep stops at the first failure.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from common.config import load_config
from common.entry import run_command
from common.errors import ConfigError
from common.yaml_text import plain_value, read_yaml

_SWEEP_KEYS = {"train", "base", "output_root", "name", "overrides", "grid"}
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass
class Trainer:
    module: str  # e.g. msbreg.train
    script: Path  # the module's file, what the launcher runs
    schema: type  # the module's CONFIG_SCHEMA


@dataclass
class SweepRun:
    name: str
    argv: list[str]  # the training arguments: --config BASE key=value ... output_dir=...


@dataclass
class Sweep:
    trainer: Trainer
    runs: list[SweepRun]

    def commands(self, launcher: str) -> list[list[str]]:
        return [shlex.split(launcher) + [str(self.trainer.script)] + run.argv for run in self.runs]


def _format_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_trainer(spec, path: str | Path = "<sweep>") -> Trainer:
    """Import the trainer a sweep file's ``train`` key names: ``msbreg/train.py`` or ``msbreg.train``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"sweep file {path}: 'train' must name a train script or module, e.g. msbreg/train.py")
    module = spec.strip()
    if module.endswith(".py"):
        script = PurePosixPath(module)
        if script.is_absolute() or ".." in script.parts:
            raise ConfigError(f"sweep file {path}: train script '{spec}' must be relative to the repository root")
        module = ".".join(script.with_suffix("").parts)
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and (module == error.name or module.startswith(error.name + ".")):
            raise ConfigError(f"sweep file {path}: unknown train module '{spec}'") from None
        raise  # the trainer exists but one of its own imports is missing
    schema = getattr(loaded, "CONFIG_SCHEMA", None)
    if not isinstance(schema, type):
        raise ConfigError(f"sweep file {path}: train module '{module}' defines no CONFIG_SCHEMA")
    return Trainer(module, Path(loaded.__file__).resolve(), schema)


def read_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    sweep = plain_value(read_yaml(path))  # YAML 1.2: "no" and "on" stay strings
    unknown = set(sweep) - _SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key '{min(unknown)}' (expected {sorted(_SWEEP_KEYS)})")
    for key in ("train", "base", "output_root", "name", "grid"):
        if key not in sweep:
            raise ConfigError(f"sweep file {path}: missing key '{key}'")
    grid = sweep["grid"]
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"sweep file {path}: 'grid' must map dotted keys to non-empty lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file {path}: grid key '{key}' must have a non-empty list of values")
    if not isinstance(sweep.get("overrides") or {}, dict):
        raise ConfigError(f"sweep file {path}: 'overrides' must map dotted keys to values")
    base = (path.parent / sweep["base"]).resolve()
    if not base.is_file():
        raise ConfigError(f"sweep file {path}: base config not found: {base}")
    sweep["base"] = base
    return sweep


def _run_name(pattern: str, values: dict, path: str | Path) -> str:
    for key in _PLACEHOLDER.findall(pattern):
        if key not in values:
            raise ConfigError(f"sweep file {path}: name placeholder '{{{key}}}' is not a grid or override key")
    return _PLACEHOLDER.sub(lambda match: _format_value(values[match.group(1)]), pattern)


def expand(path: str | Path) -> Sweep:
    """The trainer and the runs of a sweep file, in grid order."""
    sweep = read_sweep(path)
    trainer = load_trainer(sweep["train"], path)
    keys = list(sweep["grid"])
    fixed = sweep.get("overrides") or {}
    runs = []
    for combination in itertools.product(*(sweep["grid"][key] for key in keys)):
        values = {**fixed, **dict(zip(keys, combination))}
        name = _run_name(sweep["name"], values, path)
        output_dir = Path(sweep["output_root"]) / name
        argv = ["--config", str(sweep["base"])]
        argv += [f"{key}={_format_value(value)}" for key, value in values.items()]
        argv.append(f"output_dir={output_dir}")
        runs.append(SweepRun(name, argv))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep file {path}: the 'name' pattern gives the same name to several runs")
    return Sweep(trainer, runs)


def validate(sweep: Sweep) -> None:
    """Resolve every run's config against the trainer's schema (raises ``ConfigError`` naming the key)."""
    for run in sweep.runs:
        try:
            load_config(sweep.trainer.schema, run.argv)
        except ConfigError as error:
            raise ConfigError(f"run '{run.name}': {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Expand a sweep file into training runs of its trainer.")
    parser.add_argument("sweep_file")
    parser.add_argument("--run", action="store_true", help="run the commands one after the other (default: print)")
    parser.add_argument("--launcher", default=shlex.quote(sys.executable),
                        help="what precedes the train script (default: this Python); on GPUs "
                             "'accelerate launch --num_processes 8'")
    args = parser.parse_args(argv)

    def body() -> int:
        sweep = expand(args.sweep_file)
        validate(sweep)
        for index, (run, command) in enumerate(zip(sweep.runs, sweep.commands(args.launcher)), start=1):
            print(shlex.join(command), flush=True)
            if args.run:
                print(f"[{index}/{len(sweep.runs)}] {run.name}", flush=True)
                code = subprocess.call(command)
                if code != 0:
                    print(f"error: run '{run.name}' failed with exit code {code}", file=sys.stderr)
                    return code
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
