"""Collapse monitor curves: the per-dimension std of the normalised online projections over training.

Every BYOL / MSBReg step logs ``proj_std``, the mean over dimensions of the batch std of z / ||z||. Spread
over the unit sphere of R^d it is about 1/sqrt(d); a collapsed embedding (every image on the same point)
gives 0. This command reads the ``metrics.jsonl`` of one or more run folders and writes one PNG with a
curve per run (the 1/sqrt(d) level dashed) and a JSON of the numbers next to it.

    python -m msbreg.analysis.collapse_curve RUN_DIR [RUN_DIR ...] --output FIGURE.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from common.output_paths import check_output_file
from common.plots import new_figure, save_figure

METRIC = "proj_std"


def read_curve(run_dir: str | Path, metric: str = METRIC) -> tuple[list[int], list[float]]:
    """Steps and values of ``metric`` from ``<run_dir>/metrics.jsonl`` (lines without it are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in run folder '{run_dir}'")
    steps, values = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON object") from None
        if metric in record and "step" in record:
            steps.append(int(record["step"]))
            values.append(float(record[metric]))
    if not steps:
        raise ValueError(f"{path} has no '{metric}' values: not a BYOL / MSBReg run")
    return steps, values


def projection_dim(run_dir: str | Path) -> int | None:
    """The projection width (``method.projector``'s last entry) from the run's ``config.yaml``, if the run folder
    has one; runs written before the heads were width lists name it ``method.proj_output_dim``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    method = (yaml.safe_load(path.read_text()) or {}).get("method") or {}
    projector = method.get("projector")
    return projector[-1] if projector else method.get("proj_output_dim")


def write_collapse_curves(run_dirs: list[str | Path], output: str | Path, labels: list[str] | None = None,
                          groups: list[str] | None = None) -> dict:
    """Plot ``proj_std`` against the step for every run; write ``output`` (PNG) and the same name as JSON.

    ``labels`` name the runs in the JSON (default: the folder names). ``groups``, one per run, draw runs of
    the same group (the seeds of one setting) in one colour under one legend entry; by default every run is
    its own group, named by its label."""
    labels = labels or [Path(run).name for run in run_dirs]
    groups = groups or labels
    if len(labels) != len(run_dirs):
        raise ValueError(f"--labels: got {len(labels)} labels for {len(run_dirs)} run folders")
    if len(groups) != len(run_dirs):
        raise ValueError(f"got {len(groups)} groups for {len(run_dirs)} run folders")
    report = {"metric": METRIC, "runs": {}}
    figure, axis = new_figure(figsize=(6, 4))
    dims = set()
    colours: dict[str, str] = {}
    for run, label, group in zip(run_dirs, labels, groups):
        steps, values = read_curve(run)
        dim = projection_dim(run)
        dims.add(dim)
        report["runs"][label] = {"run_dir": str(run), "proj_output_dim": dim, "step": steps, METRIC: values,
                                 "final": values[-1], "min": min(values)}
        if group in colours:  # a further seed of a drawn group: its colour, no second legend entry
            axis.plot(steps, values, color=colours[group], linewidth=1, alpha=0.6)
        else:
            colours[group] = axis.plot(steps, values, label=group, linewidth=1)[0].get_color()
    for dim in sorted(d for d in dims if d):
        axis.axhline(1 / math.sqrt(dim), color="gray", linestyle="--", linewidth=1)
        axis.text(0, 1 / math.sqrt(dim), f" 1/sqrt({dim})", va="bottom", color="gray", fontsize=8)
    axis.set_xlabel("step")
    axis.set_ylabel("std of normalised projections (mean over dims)")
    axis.set_title("Collapse monitor (0 = collapsed)")
    axis.set_ylim(bottom=0)
    axis.legend()
    output = save_figure(figure, output)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders with a metrics.jsonl")
    parser.add_argument("--output", required=True, help="PNG to write; the numbers go to the same name .json")
    parser.add_argument("--labels", nargs="*", help="legend labels, one per run folder (default: folder names)")
    args = parser.parse_args(argv)
    try:
        check_output_file(args.output, "--output", (".json",))
        report = write_collapse_curves(args.run_dirs, args.output, args.labels)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}")
        return 2
    for label, run in report["runs"].items():
        print(f"{label}: final {METRIC} {run['final']:.4f}, min {run['min']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
