"""Exact resume and distributed equivalence for every paper's entry point and method.

Each run is tiny: 512 synthetic Fashion-MNIST images, batch 64 (8 steps an epoch), a width-4 CNN, small heads.
"""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from trainer_runs import launch, run, run_until_checkpoint, same_weights

from common.checkpoint import latest_checkpoint, load_checkpoint

COMMON = ["data.subset=null", "data.num_workers=0", "epochs=2", "batch_size=64", "backbone.width=4",
          "progress_bar=false", "tracker=none", "log_every_steps=1", "eval.linear_epochs=2", "eval.knn_k=[20]"]

# script, then its settings: StochCon Bernoulli with its Gumbel temperature schedule; MSBReg with K = 4 views,
# its EMA target and momentum schedule; supervised training with VCReg layers after every block, with Appendix
# A's mean removal (batch-centred forward, running means kept as BatchNorm's).
METHODS = {
    "simclr": ("stochcon/train.py", ["method.name=simclr", "method.projector=[32,16]"]),
    "stochcon": ("stochcon/train.py", [
        "method.name=stochcon", "method.projector=[32,16]",
        "method.stochcon.latent=bernoulli", "method.stochcon.latent_dim=8", "method.stochcon.variates=hard",
        "method.stochcon.gumbel_temperature_start=1.0", "method.stochcon.gumbel_temperature_end=0.1"]),
    "msbreg": ("msbreg/train.py", [
        "--config", "msbreg/configs/fashion_mnist_msbreg.yaml", "method.name=msbreg", "augment.num_views=4",
        "method.projector=[32,16]", "method.predictor=[32,16]",
        "method.lambda_s=0.004", "method.lambda_b=0.05", "save_every_epochs=1"]),
    "vcreg": ("vcreg/train.py", [
        "--config", "vcreg/configs/fashion_mnist_vcreg.yaml", "method.name=supervised", "vcreg.enabled=true",
        "vcreg.mean_removal=true", "eval.max_train_images=null"]),
    "vicreg": ("vcreg/train.py", [
        "--config", "vcreg/configs/fashion_mnist_vcreg.yaml", "method.name=vicreg", "augment.name=multiview",
        "augment.num_views=2", "method.projector=[32,32]", "vcreg.enabled=false"]),
}


def tiny(method, root, out, *extra):
    script, settings = METHODS[method]
    return script, [*settings, f"output_dir={out}", f"data.root={root}", *COMMON, *extra]


def final_model_state(out):
    """Every tensor of the model in the run's last checkpoint (EMA target and heads included)."""
    return load_checkpoint(latest_checkpoint(out))["model"]


@pytest.mark.parametrize("method", ["simclr", "stochcon", "msbreg", "vcreg"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(data_root, tmp_path, method):
    """A run killed mid-epoch and resumed ends with the weights (the EMA target too), results and metrics
    of the same run uninterrupted: schedules (Gumbel temperature, EMA momentum), noise and data restart
    exactly."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    script, args = tiny(method, data_root, straight)
    done = run(script, args)
    assert done.returncode == 0, done.stderr[-2000:]
    script, args = tiny(method, data_root, interrupted, "save_every_steps=3")
    run_until_checkpoint(script, args, interrupted, step=3, sig=signal.SIGKILL)  # step 3 of 8: mid-epoch
    resumed = run(script, [*args, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert same_weights(straight / "backbone.safetensors", interrupted / "backbone.safetensors")
    assert (json.loads((straight / "results.json").read_text())
            == json.loads((interrupted / "results.json").read_text()))
    state_straight, state_interrupted = final_model_state(straight), final_model_state(interrupted)
    assert state_straight.keys() == state_interrupted.keys()
    assert all(torch.equal(state_straight[k], state_interrupted[k]) for k in state_straight)
    if method == "msbreg":
        assert any(k.startswith("method.target_backbone.") for k in state_straight)
    metrics = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
               for out in (straight, interrupted)]
    drop = ("images_per_second",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in metrics[0]]
            == [{k: v for k, v in r.items() if k not in drop} for r in metrics[1]])


# What must be global in each case, and a learning rate. In float64 (dtype=float64) the 1-process and
# 2-process runs differ only in the order of floating-point sums (the gradient all-reduce, SyncBN's statistics,
# gathered negatives), each a relative error of a few units of 2^-53 = 1.1e-16 per operation; through one forward,
# backward and SGD step of these small networks that stays far below 1e-9 (we measured about 1e-14), while any real
# difference in what is computed (a statistic per rank, noise per rank, a gradient scaled by the world size) is of
# the order of the quantity itself. In float32 the same rounding, amplified by these tiny untrained BN nets, would
# reach 1e-5 and differ between CPUs.
DISTRIBUTED = {
    "simclr": ["optim.lr=0.5"],                               # gathered negatives, SyncBN, sliced augmentation
    "stochcon": ["optim.lr=0.5"],                             # gathered negatives, Gumbel noise per sample
    "msbreg": ["optim.lr=0.1", "method.lambda_s=0.5", "method.lambda_b=0.05"],  # L_s global, Brownian xi
    "vicreg": ["optim.lr=0.005"],                             # variance and covariance of the global batch
    # statistics and the mean removal's mean over all ranks (its backward summed over them); batch_mean: the
    # strength independent of the per-device batch (under Algorithm 1's scaling the covariance term's strength
    # grows with the per-device batch, so it changes with the world size by design: see vcreg/layer.py)
    "vcreg": ["optim.lr=0.02", "vcreg.all_reduce=true", "vcreg.normalization=batch_mean", "vcreg.alpha=0.16",
              "vcreg.beta=0.01"],
}
EXACT = {"rtol": 1e-9, "atol": 1e-12}


@pytest.mark.parametrize("method", list(DISTRIBUTED))
def test_accelerate_launch_two_processes_equals_one_process(data_root, tmp_path, method):
    """Same global batch and seed: 2 processes compute the 1-process loss and the same weights after an SGD
    step, so no statistic is taken per rank, no noise is drawn per rank and no gradient is scaled by the
    world size."""
    sgd = ["max_steps=1", "optim.name=sgd", "optim.momentum=0.0", "optim.warmup_epochs=0", "dtype=float64",
           "online_probe=false", "eval.knn_at_init=false", "eval.linear=false", *DISTRIBUTED[method]]
    one, two = tmp_path / "one", tmp_path / "two"
    script, args = tiny(method, data_root, one, *sgd)
    single = run(script, args)
    assert single.returncode == 0, single.stderr[-2000:]
    script, args = tiny(method, data_root, two, *sgd)
    launched = launch(script, args, processes=2)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert json.loads((two / "timing.json").read_text())["num_processes"] == 2
    losses = [[json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (one, two)]
    assert len(losses[0]) == 1
    assert losses[1] == pytest.approx(losses[0], rel=EXACT["rtol"], abs=EXACT["atol"])
    w1, w2 = load_file(str(one / "backbone.safetensors")), load_file(str(two / "backbone.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        assert w1[key].dtype in (torch.float64, torch.int64), key  # the run really was in float64
        torch.testing.assert_close(w2[key], w1[key], msg=key, **EXACT)
