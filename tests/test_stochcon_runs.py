"""StochCon through its entry point: every paper config resolves, and a tiny Fashion-MNIST-format run feeds the
analyses and fine-tuning."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.config import load_config
from stochcon.analysis.__main__ import main as analysis_main
from stochcon.finetune import main as finetune_main
from stochcon.train import StochConTrainConfig
from tests.trainer_runs import ROOT, run, write_idx_fashion_mnist

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
    assert load("cifar10_resnet50_gaussian").method.stochcon.gaussian_variance == "opposing"
    for variates in ("hard", "soft"):
        for placement in ("top", "bottom"):
            name = "cifar10_resnet50_bernoulli" + (
                "" if (variates, placement) == ("hard", "top") else f"_{variates}_{placement}"
            )
            latent = load(name).method.stochcon
            assert (latent.variates, latent.placement) == (variates, placement)
    assert load("cifar10_resnet50_bernoulli_soft_top_512").method.stochcon.latent_dim == 512
    assert load("cifar10_resnet50_supervised_bernoulli").method.stochcon.supervised_bypass_prob == 0.5
    assert load("cifar10_resnet50_supervised").method.stochcon.supervised_bypass_prob == 1.0
    assert [load(f"cifar10_resnet50_bernoulli_d{d}").method.stochcon.latent_dim for d in (8, 64, 1024)] == [
        8,
        64,
        1024,
    ]


def pretrain(tmp_path: Path, latent: str) -> Path:
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=128)
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
            "batch_size=64",
            "eval.linear=false",
            "eval.knn_at_init=false",
            "progress_bar=false",
            "backbone.width=8",
            "method.proj_hidden_dim=64",
            "method.stochcon.latent_dim=16",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_bernoulli_run_bit_counts_units_and_frozen_finetune(tmp_path):
    run_dir = pretrain(tmp_path, "bernoulli")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["active_bits"] <= 16 and r["gumbel_temperature"] < 1.0 for r in logged)

    out = tmp_path / "analysis"
    assert analysis_main(["bits", str(run_dir), "--out", str(out)]) == 0
    curve = json.loads((out / "bit_counts.json").read_text())[run_dir.name]
    assert curve["epochs"] == [1.0, 2.0]  # one checkpoint per epoch; bit_stats refuses anything but 0/1
    assert all(s["latent_dim"] == 16 for s in curve["train"] + curve["test"])
    assert (out / "bit_counts.png").stat().st_size > 0

    units = ["rf-units", str(run_dir), "--out", str(out), "--units", "1,4,16", "--trees", "5", "--folds", "2"]
    assert analysis_main(units) == 0
    assert json.loads((out / "rf_units.json").read_text())
    assert analysis_main(["compression", str(run_dir), "--out", str(out)]) == 0
    ratios = json.loads((out / "compression.json").read_text())
    assert ratios[run_dir.name]["ratio"] == 28 * 28 * 8 / 16
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


def test_gaussian_run_aggregate_variance_and_finetune(tmp_path):
    run_dir = pretrain(tmp_path, "gaussian")
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
