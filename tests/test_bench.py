"""The benchmarks in bench/ run end to end with --quick and write the JSON their README tables come from.

The scripts start together (one subprocess each, one torch thread each) when the first test asks for
them; each test then checks its script's exit code and JSON. ``bench/peer_lightly.py`` needs lightly, which
is not a dependency of the project: it runs under this Python if lightly imports here, else under
``.venv-bench/bin/python`` (``bench/setup_peer_env.sh``) if that exists, else its test is skipped.
``bench/trainer_throughput.py`` reads Debian's Fashion-MNIST (``scripts/setup_env.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("method_overhead", "knn", "augment", "peer_lightly", "switches", "trainer_throughput", "vcreg_overhead",
           "grad_cache")
# name: (script, extra arguments); trainer_throughput also runs on synthetic JPEG files (the image-folder pipelines)
RUNS = {name: (name, []) for name in SCRIPTS} | {"trainer_throughput_jpeg": ("trainer_throughput", ["--jpeg", "64"])}
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def python_with_lightly() -> str | None:
    candidates = [sys.executable, str(ROOT / ".venv-bench" / "bin" / "python")]
    for python in candidates:
        if Path(python).exists() and subprocess.run([python, "-c", "import lightly"], capture_output=True,
                                                     check=False).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, request) -> dict:
    """Start every selected test's script (``test_<run>_quick``) with --quick at once; each value is (process,
    output JSON path)."""
    folder = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    selected = {item.name for item in request.session.items}
    runs = {}
    for name, (script, extra) in RUNS.items():
        if f"test_{name}_quick" not in selected:
            continue
        python = sys.executable
        if name == "peer_lightly":
            python = python_with_lightly()
            if python is None:
                continue
        if name == "trainer_throughput" and not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
            continue
        output = folder / f"{name}.json"
        process = subprocess.Popen([python, str(ROOT / "bench" / f"{script}.py"), "--quick", "--output", str(output),
                                    *extra],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs[name] = (process, output)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()


def finished(quick_runs: dict, name: str) -> dict:
    if name not in quick_runs:
        pytest.skip("lightly is importable neither here nor in .venv-bench (bench/setup_peer_env.sh)"
                    if name == "peer_lightly" else f"{name} needs Debian's dataset-fashion-mnist")
    process, output = quick_runs[name]
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 0, log[-3000:]
    assert "median" in log  # the printed table
    data = json.loads(output.read_text())
    assert data["setup"]["quick"] is True and data["setup"]["device"] == "cpu"
    assert data["setup"]["threads"] == 1
    return data["results"]


def positive_quartiles(q: dict) -> None:
    assert set(q) == {"median", "q25", "q75"}
    assert 0 < q["q25"] <= q["median"] <= q["q75"]


def test_method_overhead_quick(quick_runs):
    results = finished(quick_runs, "method_overhead")
    assert json.loads(quick_runs["method_overhead"][1].read_text())["setup"]["rounds"] % 2 == 1
    variants = results["variants"]
    methods = {"simclr", "stochcon_bernoulli", "stochcon_gaussian", "byol", "msbreg_k4", "byol_4views",
               "vcreg_blocks", "supervised"}
    assert methods <= set(variants)
    assert {"bare_2views_lars", "bare_2views_lars_per_view", "bare_4views_lars_per_view",
            "bare_4views_lars_per_view_paired", "bare_1views_adamw"} <= set(variants)
    for name, row in variants.items():
        positive_quartiles(row["seconds"])
        assert row["images_per_second"] > 0
        if name in methods:
            positive_quartiles(row["ratio_to_bare"])
            # --quick times an odd number of rounds, so both medians come from the same round (the share,
            # 1 - 1 / ratio, increases with the ratio): equal up to float rounding, whatever the machine's load
            assert row["method_share"]["median"] == pytest.approx(1 - 1 / row["ratio_to_bare"]["median"],
                                                                  rel=1e-12, abs=1e-12)
            assert variants[row["bare"]]["views"] == row["views"]
    for name in ("byol", "msbreg_k4", "byol_4views"):  # also divided by the floor with the EMA target's forward
        floor = variants[name]["target_floor"]
        assert floor == variants[name]["bare"] + "_target" and floor in variants
        share = variants[name]["share_beyond_target"]
        assert share["q25"] <= share["median"] <= share["q75"] < 1  # 1 - floor / method, both times positive
    assert variants["msbreg_k4"]["views"] == 4 and variants["byol_4views"]["views"] == 4
    positive_quartiles(variants["msbreg_k4"]["ratio_to_reference"])
    positive_quartiles(variants["vcreg_blocks"]["ratio_to_reference"])


def test_knn_quick(quick_runs):
    results = finished(quick_runs, "knn")
    assert set(results["seconds"]) == {"ours", "bare", "sklearn"}
    for q in results["seconds"].values():
        positive_quartiles(q)
    positive_quartiles(results["ours_over_bare"])
    positive_quartiles(results["sklearn_over_ours"])
    assert results["bare_gflops_per_second"] > 0


def test_augment_quick(quick_runs):
    results = finished(quick_runs, "augment")
    jpeg = results["jpeg"]["images_per_second"]
    assert set(jpeg) == {"decode", "decode_simclr", "decode_dino_multicrop", "decode_crop_simclr",
                         "decode_crop_dino_multicrop", "device_half_simclr", "device_half_dino_multicrop"}
    for q in jpeg.values():
        positive_quartiles(q)
    assert set(results["jpeg"]["crop_over_full"]) == {"simclr", "dino_multicrop"}
    for q in results["jpeg"]["crop_over_full"].values():
        positive_quartiles(q)
    results = results["recipes"]
    assert [r["recipe"] for r in results] == ["simclr_28px_gray", "simclr_32px_rgb", "dino_multicrop"]
    for r in results:
        positive_quartiles(r["images_per_second"]["batched"])
        positive_quartiles(r["images_per_second"]["per_image"])
        positive_quartiles(r["batched_over_per_image"])
    assert results[2]["views"] == 10 and results[2]["view_sizes"] == [224, 224] + [96] * 8


def test_peer_lightly_quick(quick_runs):
    results = finished(quick_runs, "peer_lightly")
    assert set(results["methods"]) == {"simclr", "simclr_views_separately", "byol"}
    for row in results["methods"].values():
        positive_quartiles(row["seconds"]["ours"])
        positive_quartiles(row["seconds"]["lightly"])
        positive_quartiles(row["ours_over_lightly"])


def test_switches_quick(quick_runs):
    results = finished(quick_runs, "switches")
    variants = results["variants"]
    assert set(variants) == {"default", "bf16", "channels_last", "sgd_per_tensor", "sgd_foreach", "sgd_fused"}
    for row in variants.values():
        positive_quartiles(row["seconds"])
        positive_quartiles(row["ratio_to_reference"])
        assert row["images_per_second"] == pytest.approx(results["batch"] / row["seconds"]["median"])
        assert row["tflops_per_second"] == pytest.approx(results["step_flops"] / row["seconds"]["median"] / 1e12)
        assert row["fraction_of_peak"] is None  # no known peak for a CPU
    assert variants["default"]["ratio_to_reference"]["median"] == 1
    assert results["step_flops"] > 0


def check_trainer_throughput_rows(results: dict) -> None:
    for row in results["pipelines"].values():
        assert row["trainer_device"] == "cpu"
        for part in ("trainer", "step", "data"):
            positive_quartiles(row[f"{part}_seconds"])
            # The script's own float64 formula on the same numbers (JSON keeps every float exactly).
            assert row[f"{part}_images_per_second"] == (
                row["batch_size"] * results["steps"] / row[f"{part}_seconds"]["median"])
        positive_quartiles(row["trainer_over_step"])


def test_trainer_throughput_quick(quick_runs):
    results = finished(quick_runs, "trainer_throughput")
    pipelines = results["pipelines"]
    assert set(pipelines) == {"device", "loader_0workers", "loader_1workers"}
    check_trainer_throughput_rows(results)
    assert pipelines["loader_1workers"]["data_images_per_second_per_worker"] > 0
    assert "data_images_per_second_per_worker" not in pipelines["loader_0workers"]


def test_trainer_throughput_jpeg_quick(quick_runs):
    results = finished(quick_runs, "trainer_throughput_jpeg")
    assert results["jpeg_images"] == 64 and results["jpeg_size"] == [64, 48]
    pipelines = results["pipelines"]
    assert set(pipelines) == {"loader_0workers", "loader_1workers", "device_0workers", "device_1workers"}
    assert "augment.on=device" in pipelines["device_1workers"]["overrides"]
    check_trainer_throughput_rows(results)


def test_vcreg_overhead_quick(quick_runs):
    results = finished(quick_runs, "vcreg_overhead")
    assert [r["model"] for r in results] == ["convnext_tiny", "vit_base_patch32_224"]
    for r in results:
        assert r["layers"] == (18 if r["model"] == "convnext_tiny" else 12) == len(r["rows_and_channels"])
        for variant in ("identity", "naive", "fast", "batchnorm"):
            positive_quartiles(r["seconds"][variant])
            positive_quartiles(r["ratio_to_identity"][variant])
        assert r["ratio_to_identity"]["identity"]["median"] == 1
        assert 1 < r["flop_bound_fast_over_identity"] < 2


def test_grad_cache_quick(quick_runs):
    results = finished(quick_runs, "grad_cache")
    variants = results["variants"]
    assert set(variants) == {f"{m}_{v}" for m in ("simclr", "vicreg") for v in ("whole", "plain_k2", "cached_k2")}
    for row in variants.values():
        positive_quartiles(row["seconds"])
        positive_quartiles(row["ratio_to_whole"])
        assert row["activation_bytes"] == row["saved_for_backward_bytes"] + row["cache_bytes"] > 0
        assert (row["cache_bytes"] > 0) == (row["mode"] == "cached")
    for method in ("simclr", "vicreg"):
        assert variants[f"{method}_whole"]["memory_ratio_to_whole"] == 1
        # half the batch per forward: what autograd saves for one micro-batch is below the whole batch's
        assert variants[f"{method}_cached_k2"]["saved_for_backward_bytes"] < variants[f"{method}_whole"][
            "saved_for_backward_bytes"]
