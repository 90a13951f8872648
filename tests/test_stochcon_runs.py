"""StochCon through its entry point: every paper config resolves, and a tiny Fashion-MNIST-format run feeds the
analyses and fine-tuning."""

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.checkpoint import list_checkpoints, load_checkpoint
from common.config import load_config
from common.data import build_dataset, dataset_info, stratified_subset
from common.errors import ConfigError
from common.study.context import Context, trainer_job
from common.study.jobs import identity
from common.trainer import build_initial_method
from stochcon.analysis.__main__ import main as analysis_main
from stochcon.analysis.runs import initial_method, load_trained_method
from stochcon.finetune import FinetuneConfig, Finetuned, holdout_indices, holdout_split
from stochcon.finetune import main as finetune_main
from stochcon.stochcon import StochasticBranch
from stochcon.train import StochConTrainConfig, build_method
from tests.trainer_runs import ROOT, run, write_idx_fashion_mnist

study = importlib.import_module("stochcon.study.jobs")  # the package exports its function jobs under that name

# 300 training images in batches of 64: 4 steps an epoch (the trainer drops the last 44 images), so an epoch
# ends at step 4, not at 300 / 64 = 4.7 steps.
N_TRAIN, BATCH = 300, 64

CONFIGS = sorted((ROOT / "stochcon" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_resolves(path):
    cfg = load_config(StochConTrainConfig, ["--config", str(path)])
    assert cfg.method.name in ("simclr", "stochcon", "supervised")


def test_paper_configs_say_what_they_reproduce():
    def load(name):
        return load_config(
            StochConTrainConfig, ["--config", str(ROOT / "stochcon" / "configs" / f"{name}.yaml")]
        )

    table1 = load("cifar10_resnet50_bernoulli")
    assert (table1.batch_size, table1.optim.name, table1.augment.num_views, table1.augment.local_crops) == (
        4096,
        "lars",
        2,
        8,
    )
    assert table1.method.stochcon.latent_dim is None and table1.method.stochcon.variates == "hard"
    assert table1.method.stochcon.projectors  # pi and rho 2048 -> 2048
    assert load("cifar10_resnet50_gaussian").method.stochcon.gaussian_variance == "opposing"
    for variates in ("hard", "soft"):
        for placement in ("top", "bottom"):
            name = "cifar10_resnet50_bernoulli" + (
                "" if (variates, placement) == ("hard", "top") else f"_{variates}_{placement}"
            )
            latent = load(name).method.stochcon
            assert (latent.variates, latent.placement) == (variates, placement)
    assert load("cifar10_resnet50_bernoulli_soft_top_512").method.stochcon.latent_dim == 512
    assert load("cifar10_resnet50_supervised_bernoulli").method.bypass_prob == 0.5
    assert load("cifar10_resnet50_supervised").method.bypass_prob == 1.0
    assert [load(f"cifar10_resnet50_bernoulli_d{d}").method.stochcon.latent_dim for d in (8, 64, 1024)] == [
        8,
        64,
        1024,
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_bernoulli_config_has_bits_that_vary_over_relu_features(path):
    """Each config's latent (as built for the ResNets' 2048 pooled ReLU features, all >= 0) gives a code with
    bits that are 0 for some inputs and 1 for others, and accepts such features (no ConfigError)."""
    method_cfg = load_config(StochConTrainConfig, ["--config", str(path)]).method
    latent_cfg = getattr(method_cfg, "stochcon", None)
    if latent_cfg is None or latent_cfg.latent != "bernoulli" or getattr(method_cfg, "bypass_prob", 0) == 1:
        pytest.skip("no Bernoulli latent")
    torch.manual_seed(0)
    branch = StochasticBranch.from_config(2048, latent_cfg)
    h = torch.randn(64, 2048, generator=torch.Generator().manual_seed(1)).relu()
    branch.train()(h)  # the first batch is where a Bernoulli without pi would be refused
    code = branch.code(h)
    assert ((code.min(0).values == 0) & (code.max(0).values == 1)).any()


def pretrain(tmp_path: Path, latent: str, latent_dim: str, *overrides: str) -> Path:
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=N_TRAIN, n_test=128)
    out = tmp_path / f"run_{latent}"
    result = run(
        "stochcon/train.py",
        [
            "--config",
            f"stochcon/configs/fashion_mnist_{latent}.yaml",
            f"output_dir={out}",
            f"data.root={data}",
            "data.download=false",
            "epochs=2",
            f"batch_size={BATCH}",
            "eval.linear=false",
            "eval.knn_at_init=false",
            "progress_bar=false",
            "backbone.width=8",
            "method.projector=[64,64]",
            f"method.stochcon.latent_dim={latent_dim}",
            *overrides,
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_bernoulli_run_bit_counts_units_and_frozen_finetune(tmp_path):
    # latent_dim null: 64 bits with pi and rho 64 -> 64 over the small_convnet's pooled ReLU features.
    run_dir = pretrain(tmp_path, "bernoulli", "null")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["active_bits"] <= 64 and r["gumbel_temperature"] < 1.0 for r in logged)

    out = tmp_path / "analysis"
    assert analysis_main(["bits", str(run_dir), "--out", str(out)]) == 0
    curve = json.loads((out / "bit_counts.json").read_text())[run_dir.name]
    # Initialisation (rebuilt from the seed), then one checkpoint per epoch; bit_stats refuses anything but 0/1.
    assert curve["steps"] == [0, 4, 8] and curve["epochs"] == [0.0, 1.0, 2.0]
    # Bits both on and off (pi at the backbone width); whether they also vary across images is tested on ReLU
    # features in test_stochcon: eight steps on these synthetic squares leave the eval-mode features nearly
    # constant across images.
    for stats in curve["train"] + curve["test"]:
        assert stats["latent_dim"] == 64 and 0 < stats["mean_active"] < 64
    assert (out / "bit_counts.png").stat().st_size > 0

    units = ["rf-units", str(run_dir), "--out", str(out), "--units", "1,4,16", "--trees", "5", "--folds", "2"]
    assert analysis_main(units) == 0
    assert json.loads((out / "rf_units.json").read_text())
    assert analysis_main(["compression", str(run_dir), "--out", str(out)]) == 0
    ratios = json.loads((out / "compression.json").read_text())
    assert ratios[run_dir.name]["ratio"] == 28 * 28 * 8 / 64
    assert analysis_main(["variance", str(run_dir), "--out", str(out)]) == 2  # a Bernoulli has no variance
    assert analysis_main(["spectrum", str(run_dir), "--out", str(out), "--max-images", "100"]) == 0
    spectrum = json.loads((out / "spectrum.json").read_text())[run_dir.name]
    assert spectrum["num_images"] == 100
    assert len(spectrum["explained"]) == 64  # backbone width 8 -> 64 pooled features
    assert sum(spectrum["explained"]) == pytest.approx(1.0) and 1.0 <= spectrum["participation_ratio"] <= 64

    finetune_dir = tmp_path / "frozen"
    code = finetune_main(
        [
            "--checkpoint",
            str(run_dir),
            "--mode",
            "frozen",
            f"output_dir={finetune_dir}",
            "epochs=1",
            "batch_size=64",
            "progress_bar=false",
            "tracker=none",
        ]
    )
    assert code == 0
    results = json.loads((finetune_dir / "results.json").read_text())
    assert 0.0 <= results["test_top1"] <= 1.0 and results["mode"] == "frozen"
    before, after = (
        load_file(str(run_dir / "backbone.safetensors")),
        load_file(str(finetune_dir / "backbone.safetensors")),
    )
    assert all(
        torch.equal(before[k], after[k]) for k in before
    )  # frozen: weights and BN statistics unchanged


def test_holdout_indices_are_stratified_and_outside_the_trained_subset():
    targets = torch.arange(300) % 10  # 30 images of each class
    trained = set(stratified_subset(targets, 100))
    held = holdout_indices(targets, 100, 0.2)
    assert len(held) == 20 and not trained & set(held)
    assert torch.bincount(targets[held], minlength=10).tolist() == [2] * 10  # stratified
    assert holdout_indices(targets, 100, 0.0) == []
    with pytest.raises(ConfigError, match="data.subset"):
        holdout_indices(targets, None, 0.1)
    with pytest.raises(ConfigError, match="leaves only 20"):
        holdout_indices(targets, 280, 0.5)


def test_frozen_head_keeps_the_best_held_out_epoch(tmp_path):
    run_dir = pretrain(tmp_path, "bernoulli", "null")
    finetune_dir = tmp_path / "frozen"
    args = ["--checkpoint", str(run_dir), "--mode", "frozen", f"output_dir={finetune_dir}", "epochs=4",
            "batch_size=32", "data.subset=200", "holdout_fraction=0.25", "progress_bar=false", "tracker=none",
            "optim.lr=0.01"]
    assert finetune_main(args) == 0
    results = json.loads((finetune_dir / "results.json").read_text())
    state = load_checkpoint(list_checkpoints(finetune_dir)[-1])
    weights = next(v for k, v in state.items() if isinstance(v, dict) and any("holdout_curve" in n for n in v))
    curve = next(v for n, v in weights.items() if n.endswith("holdout_curve"))
    assert len(curve) == 4 and bool(torch.isfinite(curve).all())  # 6 steps an epoch, scored after each epoch
    assert results["chosen_epoch"] == int(curve.argmax()) + 1  # the first best of the held-out curve
    assert results["holdout_top1"] == pytest.approx(float(curve.max()))
    assert results["holdout_top1_last_epoch"] == pytest.approx(float(curve[-1]))
    assert results["holdout_images"] == 50 and 0 <= results["test_top1"] <= 1
    # the held-out images are training images never trained on, and none of them is a test image
    cfg = load_config(FinetuneConfig, ["checkpoint=x", f"data.root={tmp_path / 'data'}", "data.subset=200",
                                       "holdout_fraction=0.25", "batch_size=32"])
    holdout = holdout_split(cfg)
    train = build_dataset(replace(cfg.data, subset=None), "train")
    test = build_dataset(cfg.data, "test")
    held = holdout_indices(train.targets, 200, 0.25)
    assert torch.equal(holdout.labels, train.targets[held]) and not set(held) & set(stratified_subset(train.targets, 200))
    flat = train.images[held].flatten(1)
    assert not (flat[:, None, :] == test.images.flatten(1)[None]).all(-1).any()
    with pytest.raises(ConfigError, match="mode=frozen"):
        Finetuned(load_trained_method(run_dir)[0], 10, "finetune", holdout)


def test_gaussian_run_aggregate_variance_and_finetune(tmp_path):
    run_dir = pretrain(tmp_path, "gaussian", "16", "method.stochcon.projectors=true")
    out = tmp_path / "analysis"
    assert analysis_main(["variance", str(run_dir), "--out", str(out)]) == 0
    row = json.loads((out / "aggregate_variance.json").read_text())[run_dir.name]
    assert row["latent_dim"] == 16 and row["posterior_variance"] > 0
    assert row["aggregate_variance"] == pytest.approx(row["posterior_variance"] + row["variance_of_means"])
    finetune_dir = tmp_path / "finetune"
    code = finetune_main(
        [
            "--checkpoint",
            str(run_dir),
            "--mode",
            "finetune",
            f"output_dir={finetune_dir}",
            "epochs=1",
            "batch_size=64",
            "progress_bar=false",
            "tracker=none",
        ]
    )
    assert code == 0
    before, after = (
        load_file(str(run_dir / "backbone.safetensors")),
        load_file(str(finetune_dir / "backbone.safetensors")),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)  # finetune: the backbone moved


def test_finetune_without_checkpoint_is_a_one_line_error(capsys):
    assert finetune_main(["--mode", "frozen"]) == 2
    assert "checkpoint is required" in capsys.readouterr().err


def test_untrained_run_gives_the_initial_weights_and_a_run_without_latent_is_refused(tmp_path, capsys):
    """`initial_method` rebuilds, from a run's config, the weights the trainer starts from (the one function both
    use), and a trained checkpoint differs from them. Every command that needs a latent refuses a SimCLR run in
    one line (exit 2)."""
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=N_TRAIN, n_test=128)
    run_dir = tmp_path / "simclr"
    overrides = [f"output_dir={run_dir}", f"data.root={data}", "data.download=false", f"batch_size={BATCH}",
                 "max_steps=1", "eval.linear=false", "eval.knn_at_init=false", "progress_bar=false",
                 "backbone.width=8", "method.projector=[64,64]"]
    result = run("stochcon/train.py", ["--config", "stochcon/configs/fashion_mnist_simclr.yaml", *overrides])
    assert result.returncode == 0, result.stderr[-2000:]
    saved, cfg, state = load_trained_method(run_dir)
    assert state["step"] == 1
    rebuilt = initial_method(cfg).state_dict()
    in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
    from_trainer = build_initial_method(cfg, build_method, in_chans).state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in from_trainer.items())
    assert any(not torch.equal(rebuilt[k], v) for k, v in saved.state_dict().items())  # one step moved them

    capsys.readouterr()
    for command in ("bits", "rf-units", "variance", "compression"):
        assert analysis_main([command, str(run_dir), "--out", str(tmp_path / "analysis")]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and str(run_dir) in message and "without a latent variable" in message
        assert f"`{command}` needs a StochCon run" in message


def test_table1_recipes_are_the_command_line_runs_they_replace(tmp_path):
    """Table 1's runs moved from key=value arguments into stochcon/configs/fashion_mnist_study_*.yaml: each job
    resolves to the config it had, so the study finds its finished runs done; the budget test's runs differ from
    them only in their epochs."""
    ctx = Context("full", [0], tmp_path / "runs", tmp_path / "docs")
    latent = "method.stochcon.latent_dim=null"
    before = {"simclr": ["--config", study.SIMCLR, "eval.knn_at_init=true"],
              "bernoulli_d128": ["--config", study.BERNOULLI, *study.ALGORITHM1, latent],
              "gaussian_d128": ["--config", study.GAUSSIAN, "method.stochcon.projectors=true", latent]}
    jobs = {job.name: job for job in study.jobs(ctx)}
    for name, args in before.items():
        scale = study.pretraining_scale(ctx, study.Pretraining(name, "table1", 0, ()))
        old = trainer_job(ctx, study.PAPER, name, "table1", study.TRAIN, [*args, *scale], 0)
        assert identity(jobs[f"{study.PAPER}/{name}_s0"]) == identity(old), name
        longer = identity(jobs[f"{study.PAPER}/{name}_e20_s0"])["config"]
        assert longer["epochs"] == 20 and {**longer, "epochs": 2} == identity(old)["config"]
