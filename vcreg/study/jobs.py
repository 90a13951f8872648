"""The VCReg study's runs at CPU scale (Fashion-MNIST, the 4-stage CNN of width 16 with a VCReg layer after each
of its 8 conv-BN-ReLU units for ``blocks``): Tables 2 and 6 (pre-training on five classes, transfer to the
other five, neural collapse and mutual information), Table 3 (long tail), Table 5 (superclasses, subclass
probe), Table 4 (SimCLR and VICReg), Figure 1 (two moons).

Every table compares the same seven settings, 3 seeds each:

- ``baseline``: no VCReg layer;
- ``blocks``: after every block, Algorithm 1's scaling, alpha 0.16 and beta 0.01 -- the paper's placement
  (Appendix A) and the point its configs use (the paper reports its grid alpha in {0.16 .. 1.28} x beta in
  {0.01 .. 0.16}, not a chosen point; the repository's paper-scale configs take the grid's mildest corner);
- ``blocks_mild``: below the paper's grid, alpha 0.02 and beta 0.00125 (its mildest corner divided by 8, the
  factor its alpha spans; not from the paper): does VCReg after every block help once it pulls gently?
- ``blocks_strong``: the grid's strongest corner, alpha 1.28 and beta 0.16 (the grid's other end: the two
  corners bracket every point of it);
- ``final``: the other main placement of Table 7, only the representation entering the classifier;
- ``blocks_batch_mean``: ``vcreg.normalization=batch_mean`` (alpha and beta independent of the batch) with
  alpha 0.16 and beta set so that the last stage's covariance pull equals Algorithm 1's at beta 0.01: batch_mean's
  beta = 0.01 * (rows - 1), with rows = images per step x the last stage's 4 x 4 map (Algorithm 1's beta at n rows
  is batch_mean's beta times n - 1, ``vcreg/layer.py``); earlier stages, with more rows, are then pulled less;
- ``blocks_equations``: eqs. 3-4 as written (``batch_mean``) at the paper's point, alpha 0.16 and beta 0.01: the
  other reading the text allows, at the strength it states.

``blocks``, ``blocks_mild``, ``blocks_strong`` and ``final`` are Algorithm 1 as printed; none of the seven removes the
batch mean in the forward pass or turns eq. 7 on (the ResNet-32 settings below do).

For each Table 2 run with VCReg layers, ``vcreg.analysis.gradient_share``
measures how hard each layer pulls against the task at the first and the last step: the paper's alpha and beta
were tuned on networks 3 to 16 times wider than this CNN's 16 to 128 channels.
"""

from __future__ import annotations

from pathlib import Path

from common.study.context import Context, config_path, trainer_job
from common.study.jobs import Job

PAPER = "vcreg"
TRAIN = "vcreg.train"
SUPERVISED = config_path("vcreg/configs/fashion_mnist_vcreg.yaml")  # 20,000 images, 2 epochs, batch 256, AdamW
LAST_STAGE_LOCATIONS = 16  # the small CNN's last feature map on 28 px images: 4 x 4
BETA = 0.01


def variants(batch: int) -> dict[str, list[str]]:
    matched_beta = BETA * (batch * LAST_STAGE_LOCATIONS - 1)
    on = ["vcreg.enabled=true"]
    return {
        "baseline": ["vcreg.enabled=false"],
        "blocks": on + ["vcreg.placement=blocks", "vcreg.alpha=0.16", f"vcreg.beta={BETA}",
                        "vcreg.normalization=algorithm1"],
        "blocks_mild": on + ["vcreg.placement=blocks", "vcreg.alpha=0.02", "vcreg.beta=0.00125",
                             "vcreg.normalization=algorithm1"],
        "blocks_strong": on + ["vcreg.placement=blocks", "vcreg.alpha=1.28", "vcreg.beta=0.16",
                               "vcreg.normalization=algorithm1"],
        "final": on + ["vcreg.placement=final", "vcreg.alpha=0.16", f"vcreg.beta={BETA}",
                       "vcreg.normalization=algorithm1"],
        "blocks_batch_mean": on + ["vcreg.placement=blocks", "vcreg.alpha=0.16", f"vcreg.beta={matched_beta:g}",
                                   "vcreg.normalization=batch_mean"],
        "blocks_equations": on + ["vcreg.placement=blocks", "vcreg.alpha=0.16", f"vcreg.beta={BETA}",
                                  "vcreg.normalization=batch_mean"],
    }


# The paper's own network (issue: verdicts on the paper's architecture): Tables 3, 5 and 2 on ResNet-32 with a VCReg
# layer after each of its 15 residual blocks, at the paper's alpha 0.16 and beta 0.01, under each reading the
# text allows: Algorithm 1 as printed or eqs. 3-4 as written (``batch_mean``), each without and with Appendix A's
# forward mean removal, and eq. 7's smooth-L1 penalty on top of the paper configs' reading.
RESNET32_CONFIGS = {"table3": "vcreg/configs/fashion_mnist_lt_resnet32_vcreg.yaml",
                    "table5": "vcreg/configs/fashion_mnist_superclass_resnet32_vcreg.yaml",
                    "table2": "vcreg/configs/fashion_mnist_split_resnet32_vcreg.yaml"}
# eq. 7's delta: the 0.9 quantile of |C_ij| at initialisation on ResNet-32 at 28 px (the rule of the paper-scale
# configs; python -m vcreg.analysis.covariance_scale --config vcreg/configs/fashion_mnist_lt_resnet32_vcreg.yaml)
RESNET32_DELTA = 0.64


def resnet32_settings() -> dict[str, list[str]]:
    on = ["vcreg.enabled=true", "vcreg.placement=blocks", "vcreg.alpha=0.16", f"vcreg.beta={BETA}"]
    return {
        "baseline": ["vcreg.enabled=false"],
        "algorithm1": on + ["vcreg.normalization=algorithm1", "vcreg.mean_removal=false", "vcreg.delta=null"],
        "algorithm1_mean_removal": on + ["vcreg.normalization=algorithm1", "vcreg.mean_removal=true",
                                         "vcreg.delta=null"],
        "equations": on + ["vcreg.normalization=batch_mean", "vcreg.mean_removal=false", "vcreg.delta=null"],
        "equations_mean_removal": on + ["vcreg.normalization=batch_mean", "vcreg.mean_removal=true",
                                        "vcreg.delta=null"],
        "algorithm1_mean_removal_eq7": on + ["vcreg.normalization=algorithm1", "vcreg.mean_removal=true",
                                             f"vcreg.delta={RESNET32_DELTA}"],
    }


# Figure 1: every regulariser, VCReg after both hidden layers at the two_moons default (the grid's strongest
# corner); then VCReg alone at the grid's mildest corner, after the last hidden layer only, and with batch_mean
TWO_MOONS = {"two_moons": [],
             "two_moons_mildest": ["--alpha", "0.16", "--beta", "0.01", "--regularisers", "vcreg"],
             "two_moons_final": ["--placement", "final", "--regularisers", "vcreg"],
             "two_moons_batch_mean": ["--normalization", "batch_mean", "--regularisers", "vcreg"]}
MAIN = ("baseline", "blocks")  # tier 0: the paper's comparison; the other settings come after
LONGER_EPOCHS = 6  # Table 2's budget check: does VCReg's gap to the baseline close with training?


def images_per_step(ctx: Context) -> int:
    """The supervised runs' batch: the config's 256, the tiny budget's 64."""
    return ctx.pick(256, 64)


def split_folders(ctx: Context) -> tuple[Path, Path]:
    """Table 2's image folders: Fashion-MNIST classes 0-4 (pre-training) and 5-9 (transfer)."""
    root = ctx.runs / PAPER / "fashion_mnist_split"
    return root / "classes_0-4", root / "classes_5-9"


def supervised_tables(ctx: Context) -> dict[str, tuple[list[str], list[str]]]:
    """study -> (arguments on top of the supervised config, tiny-budget arguments)."""
    first, _ = split_folders(ctx)
    return {
        "table3": (["data.name=fashion_mnist_lt", "data.imbalance_ratio=100", "data.subset=null", "epochs=3"],
                   ["data.imbalance_ratio=10", *ctx.tiny_trainer_args(subset=None)]),
        "table5": (["data.labels=coarse", "subclass_probe.enabled=true"],
                   ["subclass_probe.epochs=1", *ctx.tiny_trainer_args()]),
        "table2": (["data.name=image_folder", f"data.root={first}", "data.subset=null"],
                   ctx.tiny_trainer_args(subset=None)),
    }


def ssl_args(ctx: Context, method: str) -> list[str]:
    """Table 4's self-supervised recipe, ``vcreg/configs/study/fashion_mnist_<method>_vcreg.yaml`` (its header says
    what it miniaturises), at the budget's scale."""
    return ["--config", config_path(f"vcreg/configs/study/fashion_mnist_{method}_vcreg.yaml"),
            *ctx.tiny_trainer_args()]


def setting_tier(study: str, name: str) -> int:
    """0: the paper's comparison; 1: Table 2's other settings (with the gradient shares that explain them);
    2: the other tables' other settings."""
    return 0 if name in MAIN else 1 if study == "table2" else 2


def jobs(ctx: Context) -> list[Job]:
    out: list[Job] = []
    settings = variants(images_per_step(ctx))
    split_needed = (f"{PAPER}/fashion_mnist_split",)
    for seed in ctx.seeds:
        for study, (full, tiny) in supervised_tables(ctx).items():
            for name, args in settings.items():
                run = trainer_job(ctx, PAPER, f"{study}_{name}", study, TRAIN,
                                  ["--config", SUPERVISED, *full, *args, *(tiny if ctx.tiny else [])], seed,
                                  tier=setting_tier(study, name), needs=split_needed if study == "table2" else ())
                out.append(run)
                if study == "table2":
                    out += [transfer_job(ctx, run, seed), collapse_job(ctx, run)]
                    out += [gradient_share_job(ctx, run)] if name != "baseline" else []
        full, tiny = supervised_tables(ctx)["table2"]
        for name in MAIN:  # the budget check: Table 2's comparison at 3x the epochs
            run = trainer_job(ctx, PAPER, f"table2_{name}_{LONGER_EPOCHS}epochs", "table2_budget", TRAIN,
                              ["--config", SUPERVISED, *full, *settings[name], f"epochs={LONGER_EPOCHS}",
                               *(tiny if ctx.tiny else [])], seed, tier=1, needs=split_needed)
            out += [run, transfer_job(ctx, run, seed)]
        out += resnet32_jobs(ctx, seed)
        for method in ("simclr", "vicreg"):
            for name, setting in variants(ctx.pick(128, 64) * 2).items():  # two views per image
                extra = ["eval.knn_at_init=true"] if name == "baseline" else []
                out.append(trainer_job(ctx, PAPER, f"table4_{method}_{name}", "table4", TRAIN,
                                       [*ssl_args(ctx, method), *setting, *extra],
                                       seed, tier=setting_tier("table4", name)))
    folder = split_folders(ctx)[0].parent
    per_class = ctx.pick(["4000", "1000", "2000", "1000"], ["1000"] * 4)
    split = Job(name=f"{PAPER}/fashion_mnist_split", module="vcreg.study.fashion_mnist_split",
                argv=["--out", str(folder), "--per-class", *per_class,
                      *(["--data-root", ctx.data_root] if ctx.data_root else [])],
                folder=folder, done=folder / "split.json", study="table2")
    moons = []
    for name, extra in TWO_MOONS.items():
        folder = ctx.runs / PAPER / name
        moons.append(Job(name=f"{PAPER}/{name}", module="vcreg.analysis.two_moons",
                         argv=["--output", str(folder / "two_moons.json"), *extra,
                               *ctx.pick([], ["--runs", "1", "--steps", "5", "--samples", "40", "--grid", "20"])],
                         folder=folder, done=folder / "two_moons.json", study="figure1"))
    return [split, *moons, *out]


def resnet32_jobs(ctx: Context, seed: int) -> list[Job]:
    """Tables 3, 5 and 2 on ResNet-32 (``RESNET32_CONFIGS``) in every ``resnet32_settings``, Table 2 with its transfer
    probe; after the small CNN's settings (tier 2), the baseline and the paper configs' reading first (tier 1)."""
    first, _ = split_folders(ctx)
    _, tiny_args = zip(*supervised_tables(ctx).values())
    tiny = dict(zip(supervised_tables(ctx), tiny_args))
    out = []
    for study, config in RESNET32_CONFIGS.items():
        extra = [f"data.root={first}"] if study == "table2" else []
        for name, args in resnet32_settings().items():
            run = trainer_job(ctx, PAPER, f"{study}_resnet32_{name}", f"{study}_resnet32", TRAIN,
                              ["--config", config_path(config), *extra, *args, *(tiny[study] if ctx.tiny else [])],
                              seed, tier=1 if name in ("baseline", "algorithm1_mean_removal") else 2,
                              needs=(f"{PAPER}/fashion_mnist_split",) if study == "table2" else ())
            out += [run, transfer_job(ctx, run, seed)] if study == "table2" else [run]
    return out


def evaluation_folder(run: Job, kind: str) -> Path:
    return run.folder.with_name(f"{run.folder.name}_{kind}")


def transfer_job(ctx: Context, run: Job, seed: int) -> Job:
    """Table 2: Kornblith's L-BFGS probe of a pre-training on the other five classes."""
    _, second = split_folders(ctx)
    folder = evaluation_folder(run, "transfer")
    return Job(name=f"{run.name}_transfer", module="evaluation",
               argv=["transfer", f"checkpoint={run.folder}", "dataset=image_folder", f"data.root={second}",
                     "image_size=28", "num_workers=0", "progress_bar=false", f"seed={seed}",
                     f"output={folder / 'transfer.json'}", *ctx.pick([], ["l2_grid=[0.01,1.0]", "max_iter=20"])],
               folder=folder, done=folder / "transfer.json", study=run.study, tier=run.tier, needs=(run.name,),
               configured=True)


def collapse_job(ctx: Context, run: Job) -> Job:
    """Table 6: MINE's mutual information of a Table 2 pre-training (CDNV and NCC are in its results.json)."""
    folder = evaluation_folder(run, "collapse")
    return Job(name=f"{run.name}_collapse", module="vcreg.analysis.collapse",
               argv=["--runs", str(run.folder), "--output", str(folder / "collapse.json"),
                     *ctx.pick([], ["--mine-images", "100", "--mine-steps", "5"])],
               folder=folder, done=folder / "collapse.json", study="table6", tier=run.tier, needs=(run.name,))


def gradient_share_job(ctx: Context, run: Job) -> Job:
    """Each VCReg layer's gradient against the task's, at a regularised run's first and last step."""
    folder = evaluation_folder(run, "gradient_share")
    return Job(name=f"{run.name}_gradient_share", module="vcreg.analysis.gradient_share",
               argv=["--run", str(run.folder), "--at", "init", "end", "--images", str(images_per_step(ctx)),
                     "--output", str(folder / "gradient_share.json")],
               folder=folder, done=folder / "gradient_share.json", study="gradient_share", tier=run.tier,
               needs=(run.name,))
