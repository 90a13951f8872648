"""Supplementary Table 4 on Fashion-MNIST under each reading of L_s, L_b and L_mc: one command for every run,
the collapse curves and the table.

    python -m msbreg.study.table4 [--root runs/msbreg/table4_study] [--seeds 0 1 2] [--cells ...]
                                  [--readings ...] [--report-only] [--figure-dir docs/figures] [-- key=value ...]

Table 4 of the supplement ("An Embedding-Dynamic Approach to Self-supervised Learning", supplement section 4)
makes three claims: BYOL with layer norm in the heads collapses (10.6 % on STL-10), the Brownian diffusive
loss L_b prevents it (BYOL + L_b, 75.3 %), and MSBReg with layer norm does not collapse and stays close to
MSBReg with batch norm (82.3 % against 91.4 %). Its five cells are the five ``fashion_mnist_*`` configs of
``CELLS``. The losses' formulas are in the unavailable main text, so each wording the paper allows is a
switch (``msbreg.msbreg.MSBRegConfig``); to keep the study affordable the readings are varied one at a time
from the configs' defaults (``READINGS``), not crossed, and a reading only runs the cells it changes.

Every run is ``msbreg/train.py --config CELL key=value ... seed=S output_dir=ROOT/READING/CELL/seedS`` with the
study's budget (``BUDGET``, the same for every cell, plus any ``key=value`` given here); a run whose folder
already has a ``results.json`` is kept. Then, from the runs' ``results.json`` and ``metrics.jsonl``:
``ROOT/table4.md`` (20-NN top-1 and the collapse monitor per reading and cell, mean and spread over the seeds
run), ``msbreg_table4_collapse_<reading>.png`` in ROOT or ``--figure-dir`` (``msbreg.analysis.collapse_curve``,
every seed of each cell) and ``msbreg_table4_readings.png`` (every reading's 20-NN and final proj_std per seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIGS = REPOSITORY / "msbreg" / "configs"

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPOSITORY))

from common.config import load_config
from common.plots import new_figure, save_figure
from msbreg.analysis.collapse_curve import projection_dim, read_curve, write_collapse_curves
from msbreg.train import MSBRegTrainConfig

# Table 4's rows on Fashion-MNIST: cell -> config (the two "BYOL" rows and the three "Ours" rows at batch 256;
# the batch-1024 BYOL-LN row and the other LN lambda_b of "Ours" are left out to keep the study affordable).
CELLS = {
    "byol_bn": "fashion_mnist_byol.yaml",
    "byol_ln": "fashion_mnist_byol_ln.yaml",
    "byol_ln_lb": "fashion_mnist_byol_ln_lb.yaml",
    "msbreg_bn": "fashion_mnist_msbreg.yaml",
    "msbreg_ln": "fashion_mnist_msbreg_ln.yaml",
}
USES_LS = ("msbreg_bn", "msbreg_ln")
USES_LB = ("byol_ln_lb", "msbreg_bn", "msbreg_ln")
USES_MC = ("msbreg_bn", "msbreg_ln")  # BYOL + L_b is MSBReg with K = 2, where leave-one-out is BYOL's loss

# Reading -> (the overrides that make it, the cells it can change). "defaults" runs every cell with the
# configs' own readings; every other reading sets one switch (or the pair of L_s) and runs only where that
# differs from the cell's config, so the reading the configs already use is not run twice.
READINGS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "defaults": ([], tuple(CELLS)),
    "ls_centred_raw": (["method.singular_value_centred=true", "method.singular_value_normalised=false"], USES_LS),
    "ls_centred_normalised": (["method.singular_value_centred=true", "method.singular_value_normalised=true"],
                              USES_LS),
    "ls_uncentred_raw": (["method.singular_value_centred=false", "method.singular_value_normalised=false"], USES_LS),
    "ls_uncentred_normalised": (["method.singular_value_centred=false", "method.singular_value_normalised=true"],
                                USES_LS),
    "lb_per_sample": (["method.brownian_direction=per_sample"], USES_LB),
    "lb_per_image": (["method.brownian_direction=per_image"], USES_LB),
    "lb_per_batch": (["method.brownian_direction=per_batch"], USES_LB),
    "lb_sphere": (["method.brownian_noise=sphere"], USES_LB),
    "lb_gaussian": (["method.brownian_noise=gaussian"], USES_LB),
    "lb_mean": (["method.brownian_reduction=mean"], USES_LB),
    "lb_sum": (["method.brownian_reduction=sum"], USES_LB),
    "mc_leave_one_out": (["method.centroid_loss=leave_one_out"], USES_MC),
    "mc_centroid_to_centroid": (["method.centroid_loss=centroid_to_centroid"], USES_MC),
}

# The study's budget, the same for every cell (Table 4 trains every row for the same epochs at batch 256):
# 600 steps of 256 images (2.6 epochs, about the quickstart configs' 3) with the quickstart network at half
# width, since some 30 runs at the configs' full budget (8-10 idle CPU minutes each) do not fit two shared
# cores. k-NN on a 10,000-image stratified bank keeps the evaluation cheap; 20-NN is the figure compared.
BUDGET = ["epochs=3", "max_steps=600", "backbone.width=8", "eval.max_train_images=10000", "eval.linear=false",
          "eval.knn_at_init=false", "save_every_epochs=3", "progress_bar=false"]

# Collapse: the mean per-dimension std of the normalised projections, about 1/sqrt(d) when spread over the
# sphere, 0 when every image maps to one point. Below a tenth of 1/sqrt(d) a run is counted as collapsed.
COLLAPSE_FRACTION = 0.1


def run_dir(root: Path, reading: str, cell: str, seed: int) -> Path:
    return root / reading / cell / f"seed{seed}"


def changes_cell(reading: str, cell: str) -> bool:
    """Whether ``reading`` applies to ``cell`` and changes its config's method settings."""
    overrides, applies_to = READINGS[reading]
    if cell not in applies_to:
        return False
    if not overrides:
        return True
    config = ["--config", str(CONFIGS / CELLS[cell])]
    return load_config(MSBRegTrainConfig, config).method != load_config(MSBRegTrainConfig, config + overrides).method


def planned_runs(readings: list[str], cells: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """(reading, cell, seed) for every run the arguments ask for, readings first, in the order given."""
    return [(reading, cell, seed) for reading in readings for cell in cells if changes_cell(reading, cell)
            for seed in seeds]


def train_command(root: Path, reading: str, cell: str, seed: int, extra: list[str]) -> list[str]:
    overrides = READINGS[reading][0]
    return [sys.executable, str(REPOSITORY / "msbreg" / "train.py"), "--config", str(CONFIGS / CELLS[cell]),
            *BUDGET, *extra, *overrides, f"seed={seed}", f"output_dir={run_dir(root, reading, cell, seed)}",
            "overwrite=true"]


def summarise(folder: Path) -> dict | None:
    """20-NN top-1, final and minimum ``proj_std`` and the projection size of one finished run (None if not)."""
    results_path = folder / "results.json"
    if not results_path.is_file():
        return None
    results = json.loads(results_path.read_text())
    _, values = read_curve(folder)
    dim = projection_dim(folder)
    return {"knn20": results["knn_top1_k20"], "proj_std": values[-1], "proj_std_min": min(values),
            "collapsed": values[-1] < COLLAPSE_FRACTION / math.sqrt(dim), "sphere_level": 1 / math.sqrt(dim)}


def _mean_spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def finished_seeds(root: Path, reading: str, cell: str) -> list[Path]:
    """The run folders of (reading, cell) that have a ``results.json``, by seed."""
    folders = [path.parent for path in (root / reading / cell).glob("seed*/results.json")]
    return sorted(folders, key=seed_of)


def seed_of(folder: Path) -> int:
    return int(folder.name.removeprefix("seed"))


def finished_runs(root: Path, readings: list[str], cells: list[str]) -> dict[str, dict[str, list[dict]]]:
    """reading -> cell -> the ``summarise`` of every finished seed (with its ``seed``), only pairs with runs."""
    runs = {reading: {cell: [{"seed": seed_of(folder), **summarise(folder)} for folder in folders]
                      for cell in cells if (folders := finished_seeds(root, reading, cell))}
            for reading in readings}
    return {reading: by_cell for reading, by_cell in runs.items() if by_cell}


def table(root: Path, readings: list[str], cells: list[str]) -> str:
    """Markdown: one row per (reading, cell) with finished runs; 20-NN and final proj_std over every seed run."""
    lines = ["| reading | cell | seeds | 20-NN top-1 | final proj_std | collapsed runs |",
             "|---|---|---|---|---|---|"]
    for reading, by_cell in finished_runs(root, readings, cells).items():
        for cell, runs in by_cell.items():
            lines.append(f"| {reading} | {cell} | {len(runs)} | {_mean_spread([r['knn20'] for r in runs], 3)} | "
                         f"{_mean_spread([r['proj_std'] for r in runs], 4)} | "
                         f"{sum(r['collapsed'] for r in runs)}/{len(runs)} |")
    lines.append("")
    lines.append("proj_std: mean per-dimension std of the L2-normalised online projections at the last logged "
                 "step; spread over the sphere about 1/sqrt(d) (0.088 for d = 128), 0 when collapsed; a run "
                 f"counts as collapsed below {COLLAPSE_FRACTION} x 1/sqrt(d). Mean ± std over the seeds run.")
    return "\n".join(lines) + "\n"


def collapse_figures(root: Path, readings: list[str], cells: list[str], figure_dir: Path | None = None) -> list[Path]:
    """One PNG per reading, ``msbreg_table4_collapse_<reading>.png`` in ``figure_dir`` (default: ``root``): the
    proj_std curve of every finished run of each cell it ran, one colour per cell."""
    written = []
    for reading in readings:
        folders, labels, groups = [], [], []
        for cell in cells:
            done = finished_seeds(root, reading, cell)
            folders += done
            labels += [f"{cell} ({folder.name})" for folder in done]
            groups += [f"{cell} ({len(done)} seed{'s' if len(done) > 1 else ''})"] * len(done)
        if folders:
            output = (figure_dir or root) / f"msbreg_table4_collapse_{reading}.png"
            write_collapse_curves(folders, output, labels, groups)
            written.append(output)
    return written


def readings_figure(root: Path, readings: list[str], cells: list[str], figure_dir: Path | None = None
                    ) -> Path | None:
    """``msbreg_table4_readings.png`` (and ``.json``) in ``figure_dir`` (default: ``root``): per reading (a row)
    and cell (a colour), every seed's 20-NN top-1 and final proj_std as dots and their mean as a bar, beside
    the sphere level 1/sqrt(d) and the collapse threshold. None when no run has finished."""
    runs = finished_runs(root, readings, cells)
    numbers = {reading: {cell: {"seeds": [run["seed"] for run in cell_runs], "runs": cell_runs}
                         for cell, cell_runs in by_cell.items()} for reading, by_cell in runs.items()}
    if not numbers:
        return None
    figure, (knn_axis, std_axis) = new_figure(1, 2, figsize=(11, 0.9 + 0.55 * len(numbers) * len(cells) / 2.5),
                                              sharey=True)
    colours = {cell: f"C{index}" for index, cell in enumerate(cells)}
    offsets = {cell: 0.8 * (index / max(len(cells) - 1, 1) - 0.5) for index, cell in enumerate(cells)}
    levels = set()
    for row, (reading, by_cell) in enumerate(numbers.items()):
        for cell, entry in by_cell.items():
            y = row + offsets[cell]
            for axis, key in ((knn_axis, "knn20"), (std_axis, "proj_std")):
                values = [run[key] for run in entry["runs"]]
                axis.scatter(values, [y] * len(values), s=12, color=colours[cell], alpha=0.7)
                axis.plot([statistics.mean(values)] * 2, [y - 0.07, y + 0.07], color=colours[cell], linewidth=2)
            levels.add(entry["runs"][0]["sphere_level"])
    for level in levels:
        std_axis.axvline(level, color="gray", linestyle="--", linewidth=1)
        std_axis.axvline(COLLAPSE_FRACTION * level, color="red", linestyle=":", linewidth=1)
    for cell in cells:  # legend: one entry per cell
        knn_axis.scatter([], [], s=12, color=colours[cell], label=cell)
    knn_axis.set_yticks(range(len(numbers)), list(numbers))
    knn_axis.invert_yaxis()
    knn_axis.set_xlabel("20-NN top-1 (dots: seeds, bar: mean)")
    std_axis.set_xlabel("final proj_std (gray: sphere level 1/sqrt(d), red: collapse threshold)")
    std_axis.set_xlim(left=0)
    knn_axis.legend(fontsize=7, loc="best")
    knn_axis.set_title("Supplementary Table 4 on Fashion-MNIST, by reading")
    output = save_figure(figure, (figure_dir or root) / "msbreg_table4_readings.png")
    output.with_suffix(".json").write_text(json.dumps(numbers, indent=1))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/msbreg/table4_study", help="folder of every run and the report")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run (default: 0)")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--readings", nargs="+", choices=list(READINGS), default=list(READINGS))
    parser.add_argument("--report-only", action="store_true", help="only write the table and the figures")
    parser.add_argument("--figure-dir", help="where the collapse PNGs go (default: --root), e.g. docs/figures")
    parser.add_argument("overrides", nargs="*", help="key=value for every run, after the study's budget")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not args.report_only:
        for reading, cell, seed in planned_runs(args.readings, args.cells, args.seeds):
            folder = run_dir(root, reading, cell, seed)
            if (folder / "results.json").is_file():
                continue
            print(f"== {reading} / {cell} / seed {seed}", flush=True)
            command = train_command(root, reading, cell, seed, args.overrides)
            code = subprocess.call(command, cwd=REPOSITORY)
            if code != 0:
                print(f"error: run {folder} exited with {code}: {' '.join(command)}")
                return code
    report = table(root, args.readings, args.cells)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table4.md").write_text(report)
    print(report)
    figure_dir = Path(args.figure_dir) if args.figure_dir else None
    figures = collapse_figures(root, args.readings, args.cells, figure_dir)
    figures.append(readings_figure(root, args.readings, args.cells, figure_dir))
    for figure in filter(None, figures):
        print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
