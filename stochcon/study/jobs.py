"""The StochCon study's runs at CPU scale (Fashion-MNIST, the 4-stage CNN of width 16): Table 1's pre-training
and fine-tuning, the bottleneck sweeps of Figures 2 and 3, Figure 4's placements, Appendix A.2's control, and
the analyses over them.

Every StochCon run follows Algorithm 1 as written (the second view alone through the latent, PyTorch's
initialisation of pi), not the Fashion-MNIST config's two additions (``both_directions``, ``pi_init_gain``);
``latent_dim: null`` is the backbone width (128 here, 2048 for the paper's ResNet-50) with pi and rho, as the
paper-scale configs. The full budget scales the Fashion-MNIST configs down to 2 epochs on 20,000 stratified
training images (312 steps of 128) so that the 3 seeds of every comparison fit the study's CPU budget.

Table 1's SimCLR, Bernoulli and Gaussian runs are the recipes ``stochcon/configs/fashion_mnist_study_*.yaml``
(the same configs as the command-line overrides they replace, so finished runs are not rerun). Table 1 has a
second Bernoulli row, ``bernoulli_d128_additions``: the same run with the config's two additions (not in the
paper), because Algorithm 1 as written leaves the code unconfident after 2 epochs (most bit probabilities between
0.1 and 0.9), so its fine-tuned and frozen heads read mostly Gumbel noise; the config's header says why the
additions help (LARS keeps pi's weight norm near its start).

Frozen heads train at most 30 epochs and keep the epoch that scores best on 1,000 held-out training images
(``stochcon.finetune``'s ``holdout_fraction``); beside each, the standard linear probe of the same backbone
(``python -m evaluation linear``). The budget test runs the three recipes at 5, 10 and 20 epochs too (2 is
Table 1's), each with its fine-tuned and frozen heads, the standard probe and, for the Bernoulli, the share of
confident bits (``python -m stochcon.analysis confidence``).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.study.context import Context, config_path, trainer_job
from common.study.jobs import Job

PAPER = "stochcon"
TRAIN = "stochcon.train"
SIMCLR = config_path("stochcon/configs/fashion_mnist_simclr.yaml")
BERNOULLI = config_path("stochcon/configs/fashion_mnist_bernoulli.yaml")
GAUSSIAN = config_path("stochcon/configs/fashion_mnist_gaussian.yaml")
# Table 1's recipes and the budget test's: Algorithm 1 at the backbone width, 2 epochs on 20,000 images
RECIPES = {"simclr": config_path("stochcon/configs/fashion_mnist_study_simclr.yaml"),
           "bernoulli_d128": config_path("stochcon/configs/fashion_mnist_study_bernoulli.yaml"),
           "gaussian_d128": config_path("stochcon/configs/fashion_mnist_study_gaussian.yaml")}
BUDGET_EPOCHS = (2, 5, 10, 20)  # the budget test; 2 is the study's own (Table 1's runs)
FROZEN_EPOCHS = 30  # the most a frozen head trains; the held-out split picks the epoch
SUPERVISED = config_path("stochcon/configs/fashion_mnist_supervised_bernoulli.yaml")
ALGORITHM1 = ["method.stochcon.both_directions=false", "method.stochcon.pi_init_gain=1.0"]
# Figure 4: two 14 px local crops (half the image side, as CIFAR's 16 of 32) after the two global views
LOCAL_CROPS = ["augment.local_crops=2", "augment.local_size=14", "augment.local_crop_scale=[0.05,0.4]"]
WIDTHS = (8, 64, 128)  # latent widths of the sweeps; 128 = the backbone width (latent_dim: null)
FIGURE4 = [("hard", "top"), ("soft", "top"), ("hard", "bottom"), ("soft", "bottom")]


@dataclass(frozen=True)
class Pretraining:
    name: str  # run name (folder <name>_s<seed>)
    study: str
    tier: int
    args: tuple[str, ...]
    epochs: int = 2


def budget_run(run: str, epochs: int) -> str:
    """The budget test's run of recipe ``run`` at ``epochs``: Table 1's own run at the study's 2 epochs."""
    return run if epochs == BUDGET_EPOCHS[0] else f"{run}_e{epochs}"


def latent_dim(width: int) -> str:
    return f"method.stochcon.latent_dim={'null' if width == 128 else width}"


def pretrainings() -> list[Pretraining]:
    runs = [Pretraining(run, "table1", 0, ("--config", recipe)) for run, recipe in RECIPES.items()]
    runs.append(Pretraining("bernoulli_d128_additions", "table1", 0, ("--config", BERNOULLI, latent_dim(128))))
    runs += [Pretraining(f"bernoulli_d{width}", "figure2_left", 1,
                         ("--config", BERNOULLI, *ALGORITHM1, latent_dim(width))) for width in WIDTHS if width != 128]
    runs += [Pretraining(f"gaussian_d{width}", "figure3", 1,
                         ("--config", GAUSSIAN, "method.stochcon.projectors=true", latent_dim(width)))
             for width in WIDTHS if width != 128]
    for variates, placement in FIGURE4:
        runs.append(Pretraining(f"{variates}_{placement}_local", "figure4", 1,
                                ("--config", BERNOULLI, *ALGORITHM1, latent_dim(128), *LOCAL_CROPS,
                                 f"method.stochcon.variates={variates}",
                                 f"method.stochcon.placement={placement}")))
    for bypass in (0.5, 1.0):
        runs.append(Pretraining(f"supervised_bypass{bypass}", "appendix_a2", 0,
                                ("--config", SUPERVISED, f"method.bypass_prob={bypass}")))
    runs += [Pretraining(budget_run(run, epochs), "budget", 2, ("--config", recipe), epochs)
             for run, recipe in RECIPES.items() for epochs in BUDGET_EPOCHS[1:]]
    return runs


def pretraining_scale(ctx: Context, run: Pretraining) -> list[str]:
    if run.study == "appendix_a2":  # its config is already at CPU scale
        return ctx.tiny_trainer_args()
    every = ctx.pick(78, 1)  # checkpoints for Figure 4's bit counts: 4 per run, plus initialisation
    # the budget test's longer runs keep their per-epoch checkpoints (the confidence analysis reads the last)
    shared = [] if run.study == "budget" else [f"save_every_steps={every}", "keep_last=100"]
    return shared + ctx.pick(["data.subset=20000", f"epochs={run.epochs}", "eval.max_train_images=10000",
                              "eval.linear_epochs=10"], ctx.tiny_trainer_args())


def finetune_scale(ctx: Context, mode: str) -> list[str]:
    """Appendix A.3's recipe (Adam 3e-4, x0.1 at 80%) on 10,000 images, mild crops and flips: 3 epochs
    fine-tuned; frozen at most FROZEN_EPOCHS, the epoch chosen on 1,000 held-out training images (10%, from those
    the 10,000 leave out). The paper reports the best of "various epoch ranges"; a frozen linear head at Adam
    3e-4 is still learning after 3 epochs (SimCLR seed 0: 58.6 at 3 epochs, 69.6 at 15, its backbone's linear
    probe 79.6); fine-tuning trains the whole network and keeps the shorter range."""
    shared = ["augment.on=device", "augment.crop_scale=[0.5,1.0]"]
    if mode == "frozen":
        shared.append("holdout_fraction=0.1")
    epochs = f"epochs={FROZEN_EPOCHS}" if mode == "frozen" else "epochs=3"
    return shared + ctx.pick([epochs, "batch_size=128", "data.subset=10000", "eval.max_train_images=5000"],
                             ["max_steps=2", "batch_size=32", "data.subset=128", "eval.max_train_images=100"])


def run_folder(ctx: Context, name: str, seed: int):
    return ctx.runs / PAPER / f"{name}_s{seed}"


def finetunes() -> list[tuple[str, str, str, int]]:
    """(pre-training run, mode, study, tier): Table 1 frozen and fine-tuned; the sweeps' frozen probes."""
    table1 = [(run, mode, "table1", 0) for run in ("simclr", "bernoulli_d128", "bernoulli_d128_additions",
                                                    "gaussian_d128")
              for mode in ("frozen", "finetune")]
    sweeps = [(f"bernoulli_d{w}", "frozen", "figure2_left", 1) for w in WIDTHS if w != 128]
    sweeps += [(f"gaussian_d{w}", "frozen", "figure3", 1) for w in WIDTHS if w != 128]
    budget = [(budget_run(run, epochs), mode, "budget", 2) for run in RECIPES for epochs in BUDGET_EPOCHS[1:]
              for mode in ("frozen", "finetune")]
    return table1 + sweeps + budget


def probed() -> list[tuple[str, str, int]]:
    """(pre-training run, study, tier) of every run with a frozen head in Table 1 or the budget test: the
    standard linear probe of its backbone goes beside the head."""
    table1 = [(run, "table1", 0) for run in ("simclr", "bernoulli_d128", "bernoulli_d128_additions", "gaussian_d128")]
    return table1 + [(budget_run(run, epochs), "budget", 2) for run in RECIPES for epochs in BUDGET_EPOCHS[1:]]


def linear_probe_job(ctx: Context, run: str, study: str, tier: int, seed: int) -> Job:
    """``python -m evaluation linear`` of a pre-training's backbone: SGD on standardised frozen features of
    10,000 stratified training images (the frozen heads' 10,000), tested on the whole test set."""
    folder = ctx.runs / PAPER / f"{run}_s{seed}_linear"
    return Job(name=f"{PAPER}/{run}_s{seed}_linear", module="evaluation",
               argv=["linear", f"checkpoint={run_folder(ctx, run, seed)}", *ctx.data_args(),
                     f"max_train_images={ctx.pick(10000, 100)}", "num_workers=0", "progress_bar=false",
                     f"seed={seed}", f"output={folder / 'linear.json'}", *ctx.pick([], ["probe.epochs=1"])],
               folder=folder, done=folder / "linear.json", study=study, tier=tier, needs=(f"{PAPER}/{run}_s{seed}",),
               configured=True)


def analyses(ctx: Context, seed: int) -> list[tuple[str, str, str, list[str], list[str]]]:
    """(name, study, done file, runs, arguments) of each analysis over one seed's runs."""
    images = ctx.pick(5000, 100)
    rf_args = ["--max-images", str(ctx.pick(3000, 100)), "--units", "1,2,4,8,11,16,32,64,128",
               "--trees", str(ctx.pick(50, 5)), "--folds", str(ctx.pick(5, 2)), "--seed", str(seed)]
    bernoulli = [f"bernoulli_d{w}" for w in WIDTHS]
    gaussian = [f"gaussian_d{w}" for w in WIDTHS]
    # at least one batch-norm batch of the tiny budget's training step (64 images x 2 views)
    confidence = ["--max-images", str(ctx.pick(1024, 256))]
    return [
        ("bits", "figure4", "bit_counts.json",
         [f"{v}_{p}_local" for v, p in FIGURE4] + bernoulli, ["--max-images", str(ctx.pick(2000, 100))]),
        ("confidence", "figure4", "bit_confidence.json",
         [f"{v}_{p}_local" for v, p in FIGURE4] + bernoulli + ["bernoulli_d128_additions"], confidence),
        ("confidence_budget", "budget", "bit_confidence.json",
         [budget_run("bernoulli_d128", epochs) for epochs in BUDGET_EPOCHS], confidence),
        ("rf_units", "figure2_right", "rf_units.json", bernoulli + gaussian, rf_args),
        ("variance", "figure3", "aggregate_variance.json", gaussian, ["--max-images", str(images)]),
    ]


def jobs(ctx: Context) -> list[Job]:
    out: list[Job] = []
    for seed in ctx.seeds:
        for run in pretrainings():
            out.append(trainer_job(ctx, PAPER, run.name, run.study, TRAIN,
                                   [*run.args, *pretraining_scale(ctx, run)], seed, tier=run.tier))
        for run, study, tier in probed():
            out.append(linear_probe_job(ctx, run, study, tier, seed))
        for run, mode, study, tier in finetunes():
            args = [f"checkpoint={run_folder(ctx, run, seed)}", f"mode={mode}", *finetune_scale(ctx, mode)]
            out.append(trainer_job(ctx, PAPER, f"{run}_{mode}", study, "stochcon.finetune", args, seed,
                                   tier=tier, needs=(f"{PAPER}/{run}_s{seed}",)))
        for name, study, done, runs, args in analyses(ctx, seed):
            folder = ctx.runs / PAPER / "analysis" / f"{name}_s{seed}"
            command = {"rf_units": "rf-units", "confidence_budget": "confidence"}.get(name, name)
            out.append(Job(name=f"{PAPER}/analysis/{name}_s{seed}", module="stochcon.analysis",
                           argv=[command, *(str(run_folder(ctx, r, seed)) for r in runs), "--out", str(folder),
                                 *args],
                           folder=folder, done=folder / done, study=study, tier=2 if study == "budget" else 1,
                           needs=tuple(f"{PAPER}/{r}_s{seed}" for r in runs)))
    return out
