"""The MSBReg study's runs at CPU scale (Fashion-MNIST, the quickstart CNN at width 8): supplementary Table 5 on a
small grid of K x lambda_s x lambda_b, and Table 3's alignment and uniformity of BYOL, BYOL + L_uniform,
BYOL + L_b + L_s and MSBReg; then supplementary Table 4 under each reading of the losses (``msbreg.study.table4``).

Every run is ``msbreg/configs/fashion_mnist_msbreg.yaml`` (batch norm in the heads; the loss readings that the
Table 4 study chose) with the Table 4 study's budget (``msbreg.study.table4.BUDGET``: 600 steps of 256 images),
the linear probe switched back on, since Tables 3 and 5 report linear accuracy; only K and the loss weights
change, so K = 2 with lambda_s = lambda_b = 0 is BYOL (the multiview centroid loss at K = 2 is BYOL's loss, as
the supplement says of Table 5 and ``tests/test_msbreg_losses.py`` checks).

- Table 5: K in {2, 4} x lambda_s in {0, 0.004} x lambda_b in {0, 0.5}: the corners of the paper's grid that carry
  its claims (K = 4's best cell 0.004 / 0.5 against no regulariser; either term alone; the same at K = 2, where
  the supplement says both terms help BYOL). K = 8 is left out: its runs cost twice K = 4's (18 CPU minutes each).
- Table 3: BYOL (the K = 2, 0 / 0 cell), BYOL + L_uniform (K = 2) at lambda_u 0.1, 0.3 and 1 (``LAMBDA_U``: the
  paper gives no weight; 1 is the paper-scale config's, and the order of the rows' uniformity depends on it),
  BYOL + L_b + L_s (K = 2, lambda_s = 0.004, lambda_b = 0.25: the K = 2 cell of Table 5 with the row's 72.8 %,
  as the paper-scale config), MSBReg (the K = 4, 0.004 / 0.5 cell); then ``msbreg.analysis.alignment_uniformity``
  on each, in its own folder, once on the backbone features and once on the online projections (the paper does
  not say which embedding its figures are of).
"""

from __future__ import annotations

from pathlib import Path

from common.study.context import Context, config_path, trainer_job
from common.study.jobs import Job
from msbreg.analysis.alignment_uniformity import EMBEDDINGS
from msbreg.study import table4
from msbreg.study.table4 import BUDGET, PAPER, TRAIN


def uniformity_row(lambda_u: float) -> str:
    """Table 3's name of BYOL + L_uniform at weight ``lambda_u`` (``byol_uniformity`` at the config's 1)."""
    return "byol_uniformity" if lambda_u == 1.0 else f"byol_uniformity_lu{lambda_u:g}"


CONFIG = config_path("msbreg/configs/fashion_mnist_msbreg.yaml")
VIEWS = (2, 4)
LAMBDA_S = (0.0, 0.004)
LAMBDA_B = (0.0, 0.5)
# tier 0: BYOL and MSBReg's best cell against K = 4 without the regularisers; the rest of the grid comes after
MAIN_CELLS = ((2, 0.0, 0.0), (4, 0.0, 0.0), (4, 0.004, 0.5))
# BYOL + L_uniform's weights: supplementary Table 3 does not give its lambda_u, so a decade around the config's 1
LAMBDA_U = (0.1, 0.3, 1.0)
# Table 3's rows: name -> (K, lambda_s, lambda_b, lambda_u); BYOL + L_uniform once per weight of LAMBDA_U
TABLE3 = {
    "byol": (2, 0.0, 0.0, 0.0),
    **{uniformity_row(lambda_u): (2, 0.0, 0.0, lambda_u) for lambda_u in LAMBDA_U},
    "byol_lb_ls": (2, 0.004, 0.25, 0.0),
    "msbreg": (4, 0.004, 0.5, 0.0),
}


def cell_name(views: int, lambda_s: float, lambda_b: float, lambda_u: float = 0.0) -> str:
    """The run's name, shared by Tables 3 and 5 where they train the same setting."""
    return f"k{views}_ls{lambda_s:g}_lb{lambda_b:g}" + (f"_lu{lambda_u:g}" if lambda_u else "")


def settings() -> dict[str, tuple[int, float, float, float]]:
    """Every training setting once: Table 5's grid, then Table 3's rows that are not in it."""
    out = {cell_name(k, s, b): (k, s, b, 0.0) for k in VIEWS for s in LAMBDA_S for b in LAMBDA_B}
    for setting in TABLE3.values():
        out.setdefault(cell_name(*setting), setting)
    return out


def scale(ctx: Context) -> list[str]:
    """The Table 4 study's budget with the linear probe (on cached features, 20 epochs as the config)."""
    return [*BUDGET, "eval.linear=true", *ctx.tiny_trainer_args()]


def run_folder(ctx: Context, name: str, seed: int) -> Path:
    return ctx.runs / PAPER / f"{name}_s{seed}"


def jobs(ctx: Context) -> list[Job]:
    out: list[Job] = []
    table3_runs = {cell_name(*setting) for setting in TABLE3.values()}
    for seed in ctx.seeds:
        for name, (views, lambda_s, lambda_b, lambda_u) in settings().items():
            study = "table3" if lambda_u else "table5"
            args = ["--config", CONFIG, f"augment.num_views={views}", f"method.lambda_s={lambda_s}",
                    f"method.lambda_b={lambda_b}", f"method.lambda_u={lambda_u}", *scale(ctx)]
            tier = 0 if (views, lambda_s, lambda_b) in MAIN_CELLS and not lambda_u else 1
            run = trainer_job(ctx, PAPER, name, study, TRAIN, args, seed, tier=tier)
            out.append(run)
            if name in table3_runs:
                out += [alignment_job(ctx, run, seed, embedding) for embedding in EMBEDDINGS]
    return out + table4.jobs(ctx)


def alignment_job(ctx: Context, run: Job, seed: int, embedding: str) -> Job:
    """Alignment and uniformity of one run's ``embedding`` (backbone or projection) on test images, in
    ``<run>_alignment_<embedding>``."""
    folder = run.folder.with_name(f"{run.folder.name}_alignment_{embedding}")
    return Job(name=f"{run.name}_alignment_{embedding}", module="msbreg.analysis.alignment_uniformity",
               argv=[str(run.folder), "--max-images", str(ctx.pick(5000, 100)), "--seed", str(seed),
                     "--device", "cpu", "--embedding", embedding, "--output",
                     str(folder / "alignment_uniformity.json")],
               folder=folder, done=folder / "alignment_uniformity.json", study="table3", tier=run.tier,
               needs=(run.name,))
