"""Supplementary Table 4 on Fashion-MNIST under each reading of L_s, L_b and L_mc: part of MSBReg's study
(``python -m msbreg.study``), its runs, collapse curves and table on the shared runner (``common.study``).

Table 4 of the supplement ("An Embedding-Dynamic Approach to Self-supervised Learning", supplement section 4)
makes three claims: BYOL with layer norm in the heads collapses (10.6 % on STL-10), the Brownian diffusive
loss L_b prevents it (BYOL + L_b, 75.3 %), and MSBReg with layer norm does not collapse and stays close to
MSBReg with batch norm (82.3 % against 91.4 %). Its five cells are the five ``fashion_mnist_*`` configs of
``CELLS``. The losses' formulas are in the unavailable main text, so each wording the paper allows is a
switch (``msbreg.msbreg.MSBRegConfig``); to keep the study affordable the readings are varied one at a time
from the configs' defaults (``READINGS``), not crossed, and a reading only runs the cells it changes.

Every run is ``msbreg.train --config CELL`` with the study's budget (``BUDGET``, the same for every cell) and
the reading's switches, in ``<runs>/msbreg/table4_<reading>_<cell>_s<seed>``. The report: ``msbreg_table4.md``
(20-NN top-1 and the collapse monitor per reading and cell, mean ± sd over the seeds run),
``msbreg_table4_collapse_<reading>.png`` (``msbreg.analysis.collapse_curve``, every seed of each cell) and
``msbreg_table4_readings.png`` (every reading's 20-NN and final proj_std per seed).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from common.config import load_config
from common.plots import legend, new_figure, save_figure
from common.study.context import Context, config_path, trainer_job
from common.study.jobs import Job
from common.study.report import PerSeed, cell, mean_sd, write_table
from msbreg.analysis.collapse_curve import projection_dim, read_curve, write_collapse_curves
from msbreg.train import MSBRegTrainConfig

PAPER = "msbreg"
TRAIN = "msbreg.train"
CONFIGS = "msbreg/configs"

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
LN_WITH_LB = ("byol_ln_lb", "msbreg_ln")  # the layer-norm cells that weigh L_b
# Supplementary Table 5's best lambda_b (ImageNet-100), 100 times Table 4's 5e-3 for the LN rows: whether Table 4's
# LN cells change at the scale on which Table 5 reports L_b's gains (the supplement's Tables 4 and 5 set lambda_b 100 times apart; docs/reproduction.md discusses it)
TABLE5_LAMBDA_B = 0.5

# Reading -> (the overrides that make it, the cells it can change). "defaults" runs every cell with the
# configs' own readings; every other reading sets one switch (or the pair of L_s) and runs only where that
# differs from the cell's config, so the reading the configs already use is not run twice. "lb_table5_scale" is
# not a reading of the words but of the weight: the configs' L_b at Table 5's lambda_b.
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
    "lb_table5_scale": ([f"method.lambda_b={TABLE5_LAMBDA_B}"], LN_WITH_LB),
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


def config(cell_name: str) -> str:
    return config_path(f"{CONFIGS}/{CELLS[cell_name]}")


def run_name(reading: str, cell_name: str) -> str:
    return f"table4_{reading}_{cell_name}"


def changes_cell(reading: str, cell_name: str) -> bool:
    """Whether ``reading`` applies to ``cell_name`` and changes its config's method settings."""
    overrides, applies_to = READINGS[reading]
    if cell_name not in applies_to:
        return False
    if not overrides:
        return True
    argv = ["--config", config(cell_name)]
    return load_config(MSBRegTrainConfig, argv).method != load_config(MSBRegTrainConfig, argv + overrides).method


@functools.cache
def planned() -> list[tuple[str, str]]:
    """(reading, cell) of every setting the study trains, in the order of ``READINGS``, then ``CELLS``."""
    return [(reading, cell_name) for reading in READINGS for cell_name in CELLS if changes_cell(reading, cell_name)]


def jobs(ctx: Context) -> list[Job]:
    """One training run per (reading, cell) and seed; the configs' own readings (tier 1) before the others."""
    return [trainer_job(ctx, PAPER, run_name(reading, cell_name), "table4", TRAIN,
                        ["--config", config(cell_name), *BUDGET, *READINGS[reading][0], *ctx.tiny_trainer_args()],
                        seed, tier=1 if reading == "defaults" else 2)
            for seed in ctx.seeds for reading, cell_name in planned()]


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


def finished_runs(ctx: Context) -> dict[str, dict[str, dict[int, dict]]]:
    """reading -> cell -> {seed: ``summarise`` of its run}, over the pairs with a finished seed."""
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for reading, cell_name in planned():
        by_seed = {seed: summary for seed in ctx.seeds
                   if (summary := summarise(ctx.runs / PAPER / f"{run_name(reading, cell_name)}_s{seed}"))}
        if by_seed:
            out.setdefault(reading, {})[cell_name] = by_seed
    return out


def per_seed(runs: dict[int, dict], key: str) -> PerSeed:
    return {seed: float(summary[key]) for seed, summary in runs.items()}


def table(ctx: Context, command: str) -> Path:
    """``msbreg_table4.md``: one row per (reading, cell) with finished runs."""
    rows = [[reading, cell_name, str(len(runs)), cell(per_seed(runs, "knn20"), ctx.seeds),
             cell(per_seed(runs, "proj_std"), ctx.seeds, digits=4),
             f"{sum(r['collapsed'] for r in runs.values())}/{len(runs)}"]
            for reading, by_cell in finished_runs(ctx).items() for cell_name, runs in by_cell.items()]
    notes = ("proj_std: mean per-dimension std of the L2-normalised online projections at the last logged step; "
             "spread over the sphere about 1/sqrt(d) (0.088 for d = 128), 0 when collapsed; a run counts as "
             f"collapsed below {COLLAPSE_FRACTION} x 1/sqrt(d). Mean ± sd over the seeds run. The study's budget: "
             "600 steps of 256 images, the quickstart network at half width (`msbreg.study.table4.BUDGET`).")
    return write_table(ctx.docs / "msbreg_table4.md", "MSBReg supplementary Table 4 under each reading of the losses",
                       ["reading", "cell", "seeds", "20-NN top-1", "final proj_std", "collapsed runs"],
                       rows or [["not run", "", "", "", "", ""]], notes, command)


def collapse_figures(ctx: Context) -> list[Path]:
    """One PNG per reading, ``msbreg_table4_collapse_<reading>.png``: the proj_std curve of every finished run
    of each cell it ran, one colour per cell."""
    written = []
    for reading, by_cell in finished_runs(ctx).items():
        folders, labels, groups = [], [], []
        for cell_name, runs in by_cell.items():
            folders += [ctx.runs / PAPER / f"{run_name(reading, cell_name)}_s{seed}" for seed in runs]
            labels += [f"{cell_name} (seed{seed})" for seed in runs]
            groups += [f"{cell_name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"] * len(runs)
        output = ctx.docs / f"msbreg_table4_collapse_{reading}.png"
        write_collapse_curves(folders, output, labels, groups)
        written.append(output)
    return written


def readings_figure(ctx: Context) -> Path | None:
    """``msbreg_table4_readings.png`` (and ``.json``): per reading (a row) and cell (a colour), every seed's
    20-NN top-1 and final proj_std as dots and their mean as a bar, beside the sphere level 1/sqrt(d) and the
    collapse threshold. None when no run has finished."""
    runs = finished_runs(ctx)
    if not runs:
        return None
    cells = list(CELLS)
    figure, (knn_axis, std_axis) = new_figure(1, 2, figsize=(11, 0.9 + 0.55 * len(runs) * len(cells) / 2.5),
                                              sharey=True)
    colours = {name: f"C{index}" for index, name in enumerate(cells)}
    offsets = {name: 0.8 * (index / max(len(cells) - 1, 1) - 0.5) for index, name in enumerate(cells)}
    levels = set()
    for row, (reading, by_cell) in enumerate(runs.items()):
        for cell_name, by_seed in by_cell.items():
            y = row + offsets[cell_name]
            for axis, key in ((knn_axis, "knn20"), (std_axis, "proj_std")):
                values = per_seed(by_seed, key)
                axis.scatter(list(values.values()), [y] * len(values), s=12, color=colours[cell_name], alpha=0.7)
                axis.plot([mean_sd(values)[0]] * 2, [y - 0.07, y + 0.07], color=colours[cell_name], linewidth=2)
            levels.update(summary["sphere_level"] for summary in by_seed.values())
    for level in levels:
        std_axis.axvline(level, color="gray", linestyle="--", linewidth=1)
        std_axis.axvline(COLLAPSE_FRACTION * level, color="red", linestyle=":", linewidth=1)
    for name in cells:  # legend: one entry per cell
        knn_axis.scatter([], [], s=12, color=colours[name], label=name)
    knn_axis.set_yticks(range(len(runs)), list(runs))
    knn_axis.invert_yaxis()
    knn_axis.set_xlabel("20-NN top-1 (dots: seeds, bar: mean)")
    std_axis.set_xlabel("final proj_std (gray: sphere level 1/sqrt(d), red: collapse threshold)")
    std_axis.set_xlim(left=0)
    legend(knn_axis, fontsize=7, loc="best")
    knn_axis.set_title("Supplementary Table 4 on Fashion-MNIST, by reading")
    output = save_figure(figure, ctx.docs / "msbreg_table4_readings.png")
    output.with_suffix(".json").write_text(json.dumps(
        {reading: {name: {"seeds": list(by_seed), "runs": [{"seed": seed, **summary} for seed, summary in by_seed.items()]}
                   for name, by_seed in by_cell.items()} for reading, by_cell in runs.items()}, indent=1))
    return output


def report(ctx: Context, command: str) -> list[Path]:
    return [table(ctx, command), *collapse_figures(ctx), *filter(None, [readings_figure(ctx)])]
