"""MSBReg entry point, paper configs and the collapse-curve command (its sweep: test_sweep.py)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from common.config import ConfigError, load_config
from common.study.context import Context
from msbreg.analysis import alignment_uniformity, collapse_curve, projection_geometry
from msbreg.byol import BYOL
from msbreg.msbreg import MSBReg
from msbreg.study import jobs as study_jobs
from msbreg.study import table4
from msbreg.study.jobs import TABLE3, cell_name
from msbreg.study.report import table3 as table3_report
from msbreg.train import MSBRegTrainConfig, build_method, main

CONFIGS = Path(__file__).resolve().parents[1] / "msbreg" / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.endswith("_sweep.yaml"))


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def cfg_from(*overrides: str) -> MSBRegTrainConfig:
    return load_config(MSBRegTrainConfig, list(overrides))


def test_defaults_are_the_supplement_recipe():
    cfg = cfg_from()
    assert (cfg.batch_size, cfg.epochs, cfg.augment.num_views) == (512, 320, 4)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.lr_scaling) == ("lars", 0.4, "linear_views")
    assert (cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.optim.exclude_bias_and_norm) == (1e-5, 10.0, True)
    assert (cfg.augment.brightness, cfg.augment.saturation, cfg.augment.hue) == (0.4, 0.2, 0.1)
    assert cfg.augment.blur_prob == [1.0] and cfg.augment.solarize_prob == [0.2]


def test_build_method_picks_byol_or_msbreg_and_rejects_inconsistent_settings():
    byol = build_method(cfg_from("method.name=byol", "augment.num_views=2"), tiny_backbone(), 6)
    assert type(byol) is BYOL
    msbreg = build_method(cfg_from("method.lambda_b=0.25", "method.head_norm=ln"), tiny_backbone(), 6)
    assert type(msbreg) is MSBReg and msbreg.cfg.lambda_b == 0.25
    assert any(type(m).__name__ == "LayerNorm" for m in msbreg.projector.modules())
    with pytest.raises(ConfigError, match="num_views=2"):
        build_method(cfg_from("method.name=byol"), tiny_backbone(), 6)
    with pytest.raises(ConfigError, match="num_views >= 2"):
        build_method(cfg_from("augment.num_views=1"), tiny_backbone(), 6)
    # Each method its own keys: BYOL has no regularisers, and the loader says so naming the key.
    with pytest.raises(ConfigError, match="'method.lambda_s'"):
        cfg_from("method.name=byol", "method.lambda_s=0")
    with pytest.raises(ConfigError, match="method.name"):
        cfg_from("method.name=simsiam")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_every_config_resolves(path):
    cfg = load_config(MSBRegTrainConfig, ["--config", str(path)])
    if cfg.method.name == "byol":
        assert cfg.augment.num_views == 2 and not hasattr(cfg.method, "lambda_s")
    assert cfg.output_dir.endswith(path.stem)
    # Every method, the baselines included, uses the augmentation of supplementary Table 1, so that Tables 3
    # and 4 compare methods only; every run logs to TensorBoard like the other packages' runs.
    table1 = (cfg.augment.flip_prob, cfg.augment.jitter_prob, cfg.augment.brightness, cfg.augment.contrast,
              cfg.augment.saturation, cfg.augment.hue, cfg.augment.grayscale_prob)
    assert table1 == (0.5, 0.8, 0.4, 0.4, 0.2, 0.1, 0.2)
    no_blur = path.stem.startswith("fashion_mnist")  # 28 px images: no blur, for every method alike
    assert (cfg.augment.blur_prob, cfg.augment.solarize_prob) == ([0.0] if no_blur else [1.0], [0.2])
    assert cfg.tracker == "tensorboard"


def test_table4_configs_carry_the_table_values():
    def method(name):
        return load_config(MSBRegTrainConfig, ["--config", str(CONFIGS / f"{name}.yaml")])

    assert method("stl10_resnet18_byol_ln").method.head_norm == "ln"
    assert method("stl10_resnet18_byol_ln_batch1024").batch_size == 1024
    assert method("stl10_resnet18_byol_ln_lb").method.lambda_b == 0.005
    assert method("stl10_resnet18_msbreg_bn").method.lambda_b == 0.05
    assert [method(f"stl10_resnet18_msbreg_ln_lb{t}").method.lambda_b for t in ("5e-4", "5e-3", "5e-2")] == [
        0.0005, 0.005, 0.05]
    r50 = method("imagenet_resnet50_msbreg")
    assert (r50.backbone.name, r50.optim.lr, r50.epochs, r50.method.projector, r50.method.base_momentum) == (
        "resnet50", 0.15, 300, [2048, 256], 0.996)


def test_collapse_curve_reads_metrics_and_writes_png_and_json(tmp_path):
    runs = []
    for name, values in (("healthy", [0.08, 0.085, 0.09]), ("collapsed", [0.08, 0.02, 0.001])):
        run = tmp_path / name
        run.mkdir()
        lines = [json.dumps({"step": 10 * (i + 1), "epoch": 0.1 * i, "loss": 1.0, "lr": 0.1, "proj_std": v})
                 for i, v in enumerate(values)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "config.yaml").write_text(yaml.safe_dump({"method": {"projector": [512, 128]}}))
        runs.append(str(run))
    output = tmp_path / "plots" / "collapse.png"
    assert collapse_curve.main(runs + ["--output", str(output)]) == 0
    assert output.stat().st_size > 1000
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["runs"]["collapsed"]["proj_std"] == [0.08, 0.02, 0.001]
    assert report["runs"]["collapsed"]["step"] == [10, 20, 30]
    assert report["runs"]["healthy"]["final"] == 0.09 and report["runs"]["healthy"]["proj_output_dim"] == 128
    assert collapse_curve.main([str(tmp_path / "missing"), "--output", str(output)]) == 2


@pytest.mark.slow
def test_msbreg_trains_end_to_end_on_fashion_mnist(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path / "run"
    code = main(["--config", str(CONFIGS / "fashion_mnist_msbreg_ln.yaml"), f"output_dir={out}", "max_steps=3",
                 "batch_size=32", "data.subset=100", "progress_bar=false", "log_every_steps=1",
                 "eval.linear=false", "eval.knn_at_init=false", "eval.max_train_images=100"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"loss_mc", "loss_s", "loss_b", "proj_std", "ema_momentum"} <= set(r) for r in records)
    assert (out / "backbone.safetensors").is_file() and "knn_top1_k20" in json.loads((out / "results.json").read_text())
    # Table 3's figures on the trained backbone: alignment in [0, 4], uniformity in [-4, 0] for unit vectors.
    assert alignment_uniformity.main([str(out), "--max-images", "64", "--device", "cpu"]) == 0
    result = json.loads((out / "alignment_uniformity.json").read_text())
    assert result["num_images"] == 64 and result["embedding"] == "backbone"
    assert 0.0 <= result["alignment"] <= 4.0 and -4.0 <= result["uniformity"] <= 0.0
    # ... and on the online projections, rebuilt from the last checkpoint: the projector's 128 dimensions.
    projected = tmp_path / "projection.json"
    assert alignment_uniformity.main([str(out), "--max-images", "64", "--device", "cpu", "--embedding", "projection",
                                      "--output", str(projected)]) == 0
    result = json.loads(projected.read_text())
    assert result["embedding"] == "projection" and result["dim"] == 128
    # Signed now: by Jensen, uniformity >= -2 x the mean squared distance over the pairs of 64 unit vectors,
    # which is at most 2 x 64 / 63.
    assert 0.0 <= result["alignment"] <= 4.0 and -4.0 * 64 / 63 <= result["uniformity"] <= 0.0
    # The projections' geometry from the last checkpoint: the same proj_std as the function of its projections.
    assert projection_geometry.main([str(out), "--max-images", "40"]) == 0
    geometry = json.loads((out / "projection_geometry.json").read_text())
    projections = projection_geometry.run_projections(out, max_images=40)
    assert projections.shape == (40, 128) and geometry == projection_geometry.projection_geometry(projections)
    assert 0.0 <= geometry["mean_share"] <= 1.0 and 1.0 <= geometry["effective_rank"] <= 128.0
    assert projection_geometry.main([str(tmp_path / "missing")]) == 2


def test_projection_geometry_on_hand_checked_directions():
    # Two images on orthogonal directions (any length): mean (1/2, 1/2), share 1/2; the centred spread is one
    # line, rank 1; the batch std of each coordinate of (1, 0) and (0, 1) is sqrt(1/2).
    pair = projection_geometry.projection_geometry(torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
    assert pair["mean_share"] == pytest.approx(0.5, abs=1e-12)
    assert pair["effective_rank"] == pytest.approx(1.0, abs=1e-12)
    assert pair["proj_std"] == pytest.approx(0.5 ** 0.5, abs=1e-12)
    # +-e1, +-e2: centred at the origin, isotropic covariance diag(1/2, 1/2): share 0, rank 2.
    cross = projection_geometry.projection_geometry(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
    assert cross["mean_share"] == pytest.approx(0.0, abs=1e-12)
    assert cross["effective_rank"] == pytest.approx(2.0, abs=1e-12)


def test_alignment_uniformity_of_paired_features():
    first = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    result = alignment_uniformity.alignment_uniformity(first, first.clone())
    assert result["alignment"] == pytest.approx(0.0, abs=1e-6)
    assert result["uniformity"] == pytest.approx(-8.0, abs=1e-5)  # one antipodal pair: log exp(-2 * 4)


def test_table4_study_plans_one_reading_at_a_time(tmp_path):
    chosen = ("defaults", "lb_per_sample", "lb_per_image", "ls_centred_raw")
    assert [pair for pair in table4.planned() if pair[0] in chosen] == [
        ("defaults", "byol_bn"), ("defaults", "byol_ln"), ("defaults", "byol_ln_lb"), ("defaults", "msbreg_bn"),
        ("defaults", "msbreg_ln"), ("ls_centred_raw", "msbreg_bn"), ("ls_centred_raw", "msbreg_ln"),
        # lb_per_sample is what the configs already use: not run twice
        ("lb_per_image", "byol_ln_lb"), ("lb_per_image", "msbreg_bn"), ("lb_per_image", "msbreg_ln")]
    # Table 5's lambda_b on the layer-norm cells that weigh L_b, and only there
    assert [pair for pair in table4.planned() if pair[0] == "lb_table5_scale"] == [
        ("lb_table5_scale", "byol_ln_lb"), ("lb_table5_scale", "msbreg_ln")]
    assert len(table4.planned()) == 27  # the 27 (reading, cell) rows of the study
    jobs = {job.name: job for job in table4.jobs(Context("full", [0, 1], tmp_path, tmp_path / "docs"))}
    assert len(jobs) == 54
    argv = jobs["msbreg/table4_lb_table5_scale_byol_ln_lb_s0"].argv
    assert argv[argv.index("--config") + 1].endswith("fashion_mnist_byol_ln_lb.yaml")
    assert load_config(MSBRegTrainConfig, argv[argv.index("--config"):argv.index("output_dir=" + str(
        tmp_path / "msbreg" / "table4_lb_table5_scale_byol_ln_lb_s0"))]).method.lambda_b == 0.5
    argv = jobs["msbreg/table4_lb_per_image_msbreg_ln_s1"].argv
    assert argv[argv.index("--config") + 1].endswith("fashion_mnist_msbreg_ln.yaml")
    assert argv.index("max_steps=600") < argv.index("method.brownian_direction=per_image")
    assert {"seed=1", f"output_dir={tmp_path / 'msbreg' / 'table4_lb_per_image_msbreg_ln_s1'}"} <= set(argv)
    for overrides, _ in table4.READINGS.values():  # every override is a key of the schema
        load_config(MSBRegTrainConfig, ["--config", str(CONFIGS / "fashion_mnist_msbreg.yaml"), *overrides])


def test_table4_study_table_from_run_folders(tmp_path):
    ctx = Context("full", [0, 1], tmp_path / "runs", tmp_path / "docs")

    def fake_run(reading, cell, seed, knn, proj_std):
        folder = ctx.runs / "msbreg" / f"{table4.run_name(reading, cell)}_s{seed}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"knn_top1_k20": knn, "knn_top1_k200": 0.5}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "proj_std": v}) + "\n"
                                                      for s, v in ((10, 0.08), (20, proj_std))))
        (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"projector": [512, 100]}}))

    assert table4.readings_figure(ctx) is None  # nothing finished yet
    fake_run("defaults", "byol_bn", 0, 0.80, 0.07)
    fake_run("defaults", "byol_bn", 1, 0.84, 0.05)
    fake_run("defaults", "byol_ln", 0, 0.30, 0.009)  # below 0.1 / sqrt(100) = 0.01: collapsed
    written = table4.report(ctx, "python -m msbreg.study --report-only")
    report = (ctx.docs / "msbreg_table4.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| defaults")]
    # mean and sample sd of (0.80, 0.84): 0.820 ± 0.028; of (0.07, 0.05): 0.0600 ± 0.0141
    assert rows == ["| defaults | byol_bn | 2 | 0.820 ± 0.028 | 0.0600 ± 0.0141 | 0/2 |",
                    "| defaults | byol_ln | 1 | 0.300 (1 of 2 seeds) | 0.0090 (1 of 2 seeds) | 1/1 |"]
    figure = ctx.docs / "msbreg_table4_collapse_defaults.png"
    summary = ctx.docs / "msbreg_table4_readings.png"
    assert written == [ctx.docs / "msbreg_table4.md", figure, summary]
    assert figure.stat().st_size > 1000 and summary.stat().st_size > 1000
    curves = json.loads(figure.with_suffix(".json").read_text())["runs"]  # every seed, not only the first
    assert set(curves) == {"byol_bn (seed0)", "byol_bn (seed1)", "byol_ln (seed0)"}
    numbers = json.loads(summary.with_suffix(".json").read_text())
    assert list(numbers) == ["defaults"] and list(numbers["defaults"]) == ["byol_bn", "byol_ln"]
    assert numbers["defaults"]["byol_bn"]["seeds"] == [0, 1]
    assert [run["knn20"] for run in numbers["defaults"]["byol_bn"]["runs"]] == [0.80, 0.84]
    assert numbers["defaults"]["byol_ln"]["runs"][0]["collapsed"] is True


def test_table3_study_runs_byol_uniformity_at_each_lambda_u(tmp_path):
    ctx = Context("full", [0], tmp_path / "runs", tmp_path / "docs")
    jobs = {job.name: job for job in study_jobs(ctx)}
    for lambda_u, run in ((0.1, "k2_ls0_lb0_lu0.1"), (0.3, "k2_ls0_lb0_lu0.3"), (1.0, "k2_ls0_lb0_lu1")):
        job = jobs[f"msbreg/{run}_s0"]  # lambda_u 1 keeps its name: its finished runs are not trained again
        assert job.study == "table3" and f"method.lambda_u={lambda_u}" in job.argv
        for embedding in ("backbone", "projection"):
            assert jobs[f"msbreg/{run}_s0_alignment_{embedding}"].needs == (job.name,)
    # one row per weight in the report, each from its own runs
    for views, lambda_s, lambda_b, lambda_u in TABLE3.values():
        folder = ctx.runs / "msbreg" / f"{cell_name(views, lambda_s, lambda_b, lambda_u)}_s0"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"linear_top1": 0.5 + lambda_u / 10, "knn_top1_k20": 0.5}))
        for embedding in ("backbone", "projection"):
            analysis = folder.with_name(f"{folder.name}_alignment_{embedding}")
            analysis.mkdir()
            (analysis / "alignment_uniformity.json").write_text(json.dumps(
                {"alignment": 0.2 + lambda_u, "uniformity": -1.0 - lambda_u}))
    table, figure = table3_report(ctx, ctx.docs, "python -m msbreg.study --report-only")
    rows = [line for line in table.read_text().splitlines() if line.startswith("| BYOL + L_uniform")]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| BYOL + L_uniform (λ_u 0.1)", "51.0"], ["| BYOL + L_uniform (λ_u 0.3)", "53.0"],
        ["| BYOL + L_uniform (λ_u 1)", "60.0"]]
    assert "| 0.500 | -1.300 | 0.500 | -1.300 |" in rows[1] and figure.stat().st_size > 1000
