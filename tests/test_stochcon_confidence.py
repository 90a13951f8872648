"""The Bernoulli code's confidence (``stochcon.analysis.bit_confidence``) and the batch-statistics reading of a
network (what a training step sees) against its eval-mode reading."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from stochcon.analysis.__main__ import main as analysis_main
from stochcon.analysis.bit_confidence import LOGISTIC_STD, batch_statistics_features, confidence
from tests.trainer_runs import ROOT, write_idx_fashion_mnist


def test_confidence_hand_checked():
    # log 9 = 2.197 is where sigmoid crosses 0.9: 3.0 and -2.5 are confident, 2.0, 0.0 and -1.0 are not
    phi = np.array([[3.0, 0.0, -1.0], [-2.5, 2.0, -1.0]])
    c = confidence(phi)
    assert (c.images, c.latent_dim) == (2, 3)
    assert c.confident_fraction == pytest.approx(2 / 6)
    assert c.mean_abs_logit == pytest.approx(9.5 / 6)
    assert c.logit_to_noise == pytest.approx(9.5 / 6 / (math.pi / math.sqrt(3)))
    assert c.max_abs_logit == 3.0
    assert c.active_fraction == pytest.approx(3 / 6)  # phi >= 0: 3.0, 0.0, 2.0
    # unit 0 varies, unit 1 is on for both images (0.0 >= 0), unit 2 off for both
    assert (c.constant_units, c.always_on, c.always_off) == (2, 1, 1)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        confidence(np.zeros(3))


def test_logistic_noise_sd_is_pi_over_sqrt3():
    # Var of Logistic(0, 1) is pi^2 / 3: checked against the sampler's own noise, 10^6 draws in float64
    u = torch.rand(1_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = torch.logit(u)
    assert LOGISTIC_STD == pytest.approx(1.8138, abs=1e-4)
    # the sd of a sample sd of 10^6 draws is about sd * sqrt((kurtosis - 1) / (4 n)) = 1.8 * 0.0011: 5 of them
    assert float(noise.std()) == pytest.approx(LOGISTIC_STD, abs=5 * LOGISTIC_STD * math.sqrt(5.2 / 4e6))


def test_batch_statistics_are_the_training_step_and_leave_the_network_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double().eval()
    images = torch.randn(10, 4, dtype=torch.float64) * 5 + 3
    before = [b.clone() for b in net.buffers()]
    features, kept = batch_statistics_features(net, images, batch_size=4, seed=1)
    assert len(kept) == 8 and features.shape == (8, 3)  # two batches of 4; the last 2 images dropped
    assert net.training is False and all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    # each batch's rows are normalised by that batch: rebuild the batches and compare with train mode
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:8]
    expected = torch.empty(8, 3, dtype=torch.float64)
    for batch in order.split(4):
        x = net[0](images[batch])
        normed = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + net[1].eps)
        expected[torch.searchsorted(kept, batch)] = normed * net[1].weight + net[1].bias
    torch.testing.assert_close(features, expected.detach(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="batch"):
        batch_statistics_features(net, images, batch_size=11)


def test_confidence_of_a_config_at_initialisation_in_both_modes(tmp_path, monkeypatch):
    """Before the first step eval mode reads batch norm's initial running statistics (mean 0, variance 1), so
    the un-normalised features give logits near pi's bias; batch statistics give larger logits with more
    units varying over the images."""
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=64, n_test=128)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "conf"
    code = analysis_main(["confidence", "stochcon/configs/fashion_mnist_bernoulli.yaml", "--out", str(out),
                          "--set", f"data.root={data}", "data.download=false", "batch_size=32",
                          "method.stochcon.latent_dim=null", "method.stochcon.pi_init_gain=1.0"])
    assert code == 0
    rows = json.loads((out / "bit_confidence.json").read_text())
    eval_row, batch_row = (rows[f"fashion_mnist_bernoulli.yaml step 0 {mode}"] for mode in ("eval", "batch"))
    assert eval_row["images"] == 128 and batch_row["images"] == 128  # 2 batches of 32 x 2 views
    assert batch_row["mean_abs_logit"] > eval_row["mean_abs_logit"]
    assert batch_row["constant_units"] < eval_row["constant_units"]
    assert (out / "bit_confidence.png").is_file()
