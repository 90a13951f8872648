"""Barlow Twins, the worked example of docs/adding_a_method.md: its loss against Eq. 1 by hand, and a short run
of its trainer."""

import json
import sys

import pytest
import torch
import yaml
from trainer_runs import ROOT, run, write_idx_fashion_mnist

sys.path.insert(0, str(ROOT))  # the example is not installed: import it from the repository, as its train.py does
from examples.barlowtwins.losses import barlow_twins_loss


def test_loss_equals_equation_1_on_a_hand_checked_example():
    # Two dimensions, four samples. z1's columns standardise to a = (-1, -1, 1, 1) and b = (-1, 1, -1, 1);
    # z2 = z1 with its columns swapped, so C = [[a.b, a.a], [b.b, b.a]] / 4 = [[0, 1], [1, 0]]:
    # on-diagonal (1 - 0)^2 x 2 = 2, off-diagonal 1 + 1 = 2, L = 2 + lambda x 2.
    z1 = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    z2 = z1.flip(1)
    assert barlow_twins_loss(z1, z2, lambda_offdiag=0.5, eps=0.0).item() == pytest.approx(3.0, abs=1e-12)
    # identical views of decorrelated dimensions: C = I, nothing to reduce
    assert barlow_twins_loss(z1, z1 * 3 + 1, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_is_invariant_to_the_scale_and_shift_of_each_dimension():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 6, generator=g, dtype=torch.float64), torch.randn(32, 6, generator=g,
                                                                               dtype=torch.float64)
    scale, shift = torch.rand(6, generator=g, dtype=torch.float64) + 0.5, torch.randn(6, generator=g,
                                                                                    dtype=torch.float64)
    # float64 with eps=0: only rounding differs, a few units of 2^-53 per operation
    assert barlow_twins_loss(z1 * scale + shift, z2, eps=0.0).item() == pytest.approx(
        barlow_twins_loss(z1, z2, eps=0.0).item(), rel=1e-12)


def test_the_trainer_runs_and_writes_its_results(tmp_path):
    root = write_idx_fashion_mnist(tmp_path / "fmnist")
    out = tmp_path / "run"
    # no --config: the example's default is its CPU-sized Fashion-MNIST config
    done = run("examples/barlowtwins/train.py", [f"output_dir={out}", f"data.root={root}", "epochs=1",
                                                 "batch_size=64", "backbone.width=4", "method.projector=[32,32]",
                                                 "progress_bar=false", "tracker=none", "eval.linear_epochs=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 8 and {"knn_top1_k20", "knn_top1_k200", "linear_top1"} <= results.keys()
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_without_arguments_it_is_the_cpu_sized_fashion_mnist_run():
    done = run("examples/barlowtwins/train.py", ["--print-config"])
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load(done.stdout)
    assert (resolved["backbone"]["name"], resolved["data"]["name"]) == ("small_convnet", "fashion_mnist")
    assert resolved["method"]["projector"] == [512, 512, 512] and resolved["epochs"] == 4
