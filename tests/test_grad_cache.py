"""Gradient caching (common/grad_cache.py): K accumulated micro-batches compute the loss and the gradient of the
whole batch, for every method whose loss couples its batch, on one process and on two, and a run stopped inside
an accumulation cycle resumes exactly.

Exactness argument for the tolerance. In float64 the cached step does the same operations on the same numbers as
the unaccumulated one, except that sums run in another order: each parameter's gradient is summed over K
micro-batches instead of over one batch, and a convolution over B / K images may block its sums differently.
Each reordered sum of n terms moves the result by at most about n * 2^-53 = n * 1.1e-16 of its magnitude; with
n below a few hundred here that is under 1e-13, so a tolerance of 1e-10 of each gradient's norm cannot fail from
rounding, while what caching exists to fix (B / K negatives, statistics of B / K samples) changes gradients by
percents (``test_plain_accumulation_of_a_coupled_loss_is_another_method``).

The networks here have no batch norm: its batch statistics stay per micro-batch by design (as per device without
SyncBN), so with it K micro-batches would rightly differ from one batch.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from trainer_runs import launch, run

from common.checkpoint import latest_checkpoint, load_checkpoint
from common.config import load_config
from common.grad_cache import cached_accumulation
from common.probe import OnlineProbe
from common.seeds import derive_seed
from common.trainer import NonFiniteLossError, Preempted, Trainer, TrainingModule, restored_buffers
from examples.barlowtwins.method import BarlowTwins, BarlowTwinsConfig
from msbreg.byol import BYOL, BYOLConfig
from msbreg.msbreg import MSBReg, MSBRegConfig
from stochcon import train as stochcon_train
from stochcon.latents import LatentConfig
from stochcon.simclr import SimCLR, SimCLRConfig
from stochcon.stochcon import StochCon, StochConConfig
from vcreg.losses import decov_loss
from vcreg.method import SimCLRBaseline, SupervisedClassifier, VICRegBaseline, VICRegConfig
from vcreg.method import SimCLRConfig as VCRegSimCLRConfig

BATCH, FEATURES, CLASSES, SEED = 8, 6, 3, 1234
HEAD = [16, 8]
EXACT = 1e-10  # of each gradient's norm: see the module docstring


def tiny_backbone() -> nn.Module:
    """A small conv net without batch norm; the pooling takes any image size (multi-crop's local views)."""
    return nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.Tanh(), nn.Conv2d(5, FEATURES, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def without_batchnorm(module: nn.Module) -> nn.Module:
    """Every batch-norm layer replaced by the identity (VICReg's and Barlow Twins' heads have them built in)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def stochcon(latent: str) -> StochCon:
    cfg = StochConConfig(projector=HEAD, projector_norm="none",
                         stochcon=LatentConfig(latent=latent, latent_dim=4, variates="hard"))
    return StochCon(tiny_backbone(), FEATURES, cfg, 2)


# name -> (the method, number of views, sizes of the local views)
METHODS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "simclr": (lambda: SimCLR(tiny_backbone(), FEATURES, SimCLRConfig(projector=HEAD, projector_norm="none"), 2),
               2, 0),
    "simclr_multicrop": (lambda: SimCLR(tiny_backbone(), FEATURES,
                                        SimCLRConfig(projector=HEAD, projector_norm="none"), 2), 2, 2),
    "stochcon_bernoulli": (lambda: stochcon("bernoulli"), 2, 0),
    "stochcon_gaussian": (lambda: stochcon("gaussian"), 2, 0),
    "vicreg": (lambda: VICRegBaseline(tiny_backbone(), FEATURES, VICRegConfig(projector=HEAD)), 2, 0),
    "simclr_vcreg": (lambda: SimCLRBaseline(tiny_backbone(), FEATURES, VCRegSimCLRConfig(projector=HEAD)), 2, 0),
    "barlow_twins": (lambda: BarlowTwins(tiny_backbone(), FEATURES, BarlowTwinsConfig(projector=HEAD)), 2, 0),
    "byol": (lambda: BYOL(tiny_backbone(), FEATURES, BYOLConfig(projector=HEAD, predictor=HEAD, head_norm="none")),
             2, 0),
    # L_s couples the batch, L_b draws per-sample directions
    "msbreg": (lambda: MSBReg(tiny_backbone(), FEATURES, MSBRegConfig(
        projector=HEAD, predictor=HEAD, head_norm="none", lambda_s=0.5, lambda_b=0.5)), 4, 0),
    # L_uniform is computed in float32 (msbreg.losses): exact here only because the rows keep their order on one
    # process, so float32 sees the same numbers in the same order
    "msbreg_uniformity": (lambda: MSBReg(tiny_backbone(), FEATURES, MSBRegConfig(
        projector=HEAD, predictor=HEAD, head_norm="none", lambda_s=0.0, lambda_b=0.0, lambda_u=0.3)), 2, 0),
    "msbreg_per_batch_sum": (lambda: MSBReg(tiny_backbone(), FEATURES, MSBRegConfig(
        projector=HEAD, predictor=HEAD, head_norm="none", lambda_s=0.0, lambda_b=0.5,
        brownian_direction="per_batch", brownian_reduction="sum")), 2, 0),
    "decov": (lambda: SupervisedClassifier(tiny_backbone(), FEATURES, CLASSES, penalty=("decov", 0.1, decov_loss)),
              1, 0),
}


def build(name: str, probe: bool = True) -> tuple[TrainingModule, list[torch.Tensor], torch.Tensor]:
    """The method (float64, no batch norm, plus an online probe), a batch of views and its labels."""
    make, num_views, local = METHODS[name]
    torch.manual_seed(0)
    method = without_batchnorm(make())
    module = TrainingModule(method, OnlineProbe(FEATURES, CLASSES) if probe else None).double()
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 1, 8, 8, generator=generator, dtype=torch.float64) for _ in range(num_views)]
    views += [torch.randn(BATCH, 1, 6, 6, generator=generator, dtype=torch.float64) for _ in range(local)]
    return module, views, torch.randint(0, CLASSES, (BATCH,), generator=generator)


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def one_batch(module: TrainingModule, views, labels) -> tuple[float, dict[str, torch.Tensor]]:
    """The unaccumulated step: the loss of the whole batch and its gradients (the trainer's K = 1 path)."""
    module.zero_grad()
    torch.manual_seed(SEED)
    out = module(views, labels)
    (out["loss"] + out.get("probe_loss", 0.0)).backward()
    return float(out["loss"].detach()), gradients(module)


def micro_batches(views, labels, k: int, rank: int = 0, world: int = 1):
    """This rank's k micro-batches of a step, laid out as common.batches does: micro-batch major, then rank."""
    m = BATCH // (k * world)
    rows = [slice((micro * world + rank) * m, (micro * world + rank + 1) * m) for micro in range(k)]
    return [[v[r] for v in views] for r in rows], [labels[r] for r in rows]


def cached(module: TrainingModule, views, labels, k: int, rank: int = 0, world: int = 1):
    """The trainer's cached path on this rank: (whole-batch loss dict, gradients)."""
    module.zero_grad()
    micro_views, micro_labels = micro_batches(views, labels, k, rank, world)
    with restored_buffers(module, True) as restore:
        out, finite = cached_accumulation(
            module, module.method, micro_views, micro_labels,
            reseed=lambda micro: torch.manual_seed(derive_seed(SEED, micro)), noise_seed=SEED,
            restore_buffers=restore, finite=lambda loss, terms: bool(torch.isfinite(loss)))
    assert finite
    return out, gradients(module)


def plain(module: TrainingModule, views, labels, k: int):
    """Plain accumulation: each micro-batch's own loss / k (the trainer with grad_cache=false)."""
    module.zero_grad()
    losses = []
    for micro, (v, y) in enumerate(zip(*micro_batches(views, labels, k))):
        torch.manual_seed(derive_seed(SEED, micro))
        out = module(v, y)
        ((out["loss"] + out.get("probe_loss", 0.0)) / k).backward()
        losses.append(float(out["loss"].detach()))
    return sum(losses) / k, gradients(module)


def assert_same_gradients(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Each parameter's gradient within EXACT of the whole gradient's norm: rounding is relative to the terms
    summed, not to their sum, and a gradient that cancels to zero (the bias before a batch standardisation, as
    in Barlow Twins' cross-correlation) is rounding only."""
    assert got.keys() == expected.keys()
    scale = float(torch.cat([grad.flatten() for grad in expected.values()]).norm())
    for name, grad in expected.items():
        error = float((got[name] - grad).norm())
        assert error <= EXACT * scale, f"{name}: |difference| {error:.3g}, |gradient| {scale:.3g}"


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("name", list(METHODS))
def test_cached_accumulation_equals_the_whole_batch(name, k):
    """Loss and every gradient (backbone, heads, latent, probe) of K cached micro-batches equal those of the
    whole batch in float64: the same negatives, statistics and noise per sample."""
    module, views, labels = build(name)
    loss, expected = one_batch(module, views, labels)
    out, got = cached(module, views, labels, k)
    assert float(out["loss"]) == pytest.approx(loss, rel=EXACT)
    assert_same_gradients(got, expected)
    assert any(name.startswith("method.backbone.") for name in got)
    if module.method.couples_batch:
        assert "probe_loss" in out and float(out["probe_loss"]) > 0


def test_the_fp16_loss_scale_reaches_every_gradient_as_in_the_plain_path():
    """Under fp16 the trainer passes the grad scaler's ``scale``: the cached gradient of the loss and the probe's
    term carry it, so every parameter gradient is the scaled one that ``scaler.scale(loss).backward()`` gives
    (a power of two: exact in float64), and the scaler's unscale_ then divides it out as for the plain path."""
    module, views, labels = build("stochcon_bernoulli")
    _, expected = one_batch(module, views, labels)
    module.zero_grad()
    micro_views, micro_labels = micro_batches(views, labels, 2)
    with restored_buffers(module, True) as restore:
        cached_accumulation(module, module.method, micro_views, micro_labels,
                            reseed=lambda micro: torch.manual_seed(derive_seed(SEED, micro)), noise_seed=SEED,
                            restore_buffers=restore, finite=lambda loss, terms: True, scale=lambda loss: loss * 1024)
    assert_same_gradients({name: grad / 1024 for name, grad in gradients(module).items()}, expected)


def test_plain_accumulation_of_a_coupled_loss_is_another_method():
    """Why caching exists: accumulating SimCLR's micro-batch losses contrasts B / K negatives, a different loss
    and gradient; BYOL's loss is a mean over images, so it needs no caching (plain accumulation is exact)."""
    module, views, labels = build("simclr", probe=False)
    loss, expected = one_batch(module, views, labels)
    plain_loss, plain_grads = plain(module, views, labels, 2)
    assert abs(plain_loss - loss) > 0.01 * abs(loss)
    assert all(float((plain_grads[n] - g).norm()) > 1e-3 * float(g.norm()) for n, g in expected.items())
    assert module.method.couples_batch

    module, views, labels = build("byol", probe=False)
    assert not module.method.couples_batch
    loss, expected = one_batch(module, views, labels)
    plain_loss, plain_grads = plain(module, views, labels, 2)
    assert plain_loss == pytest.approx(loss, rel=EXACT)
    assert_same_gradients(plain_grads, expected)


def test_batch_norm_running_statistics_move_once_per_micro_batch():
    """Pass 1's updates are undone: after a cached step the running statistics are those of plain accumulation."""
    def make() -> SimCLR:
        return SimCLR(nn.Sequential(tiny_backbone(), nn.BatchNorm1d(FEATURES)), FEATURES,
                      SimCLRConfig(projector=HEAD, projector_norm="bn"), 2).double()

    first, second = make(), make()
    second.load_state_dict(first.state_dict())
    _, views, labels = build("simclr", probe=False)
    cached(TrainingModule(first, None), views, labels, 2)
    plain(TrainingModule(second, None), views, labels, 2)
    buffers = dict(second.named_buffers())
    for name, value in first.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=1e-12, atol=0, msg=name)
    assert int(buffers["backbone.1.num_batches_tracked"]) == 2


# ----------------------------------------------------------------------------------------------- two processes
TWO_PROCESSES = ["simclr", "stochcon_bernoulli", "stochcon_gaussian", "vicreg", "barlow_twins", "msbreg"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for name in TWO_PROCESSES:
        module, views, labels = build(name)
        out, grads = cached(module, views, labels, 2, rank, world)
        for grad in grads.values():  # what DDP does: average parameter gradients over the processes
            dist.all_reduce(grad)
            grad /= world
        loss = out["loss"].reshape(1).clone()  # InfoNCE's is that of the rank's anchors: the run logs the mean
        dist.all_reduce(loss)
        results[name] = (float(loss) / world, grads)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_with_cached_accumulation_equal_the_whole_batch(tmp_path):
    """2 processes x 2 cached micro-batches: every process computes the whole batch's loss, and the averaged
    gradients are those of one process with the whole batch (negatives and statistics gathered, the noise of
    each sample the same)."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in TWO_PROCESSES:
            module, views, labels = build(name)
            loss, expected = one_batch(module, views, labels)
            got_loss, got = results[name]
            assert got_loss == pytest.approx(loss, rel=EXACT), name
            # the probe sees this rank's images only: its gradient is averaged like any per-sample loss
            assert_same_gradients(got, expected)


# ---------------------------------------------------------------------------------------- the trainer itself
def tiny(root, out, *extra) -> list[str]:
    """SimCLR on 512 synthetic images, batch 64 in 2 cached micro-batches, a width-4 CNN, float64."""
    return [f"output_dir={out}", f"data.root={root}", "data.subset=null", "data.num_workers=0", "batch_size=64",
            "grad_accum_steps=2", "backbone.width=4", "method.projector=[32,16]", "dtype=float64",
            "progress_bar=false", "tracker=none", "log_every_steps=1", "eval.knn_at_init=false", "eval.linear=false",
            "eval.knn_k=[20]", *extra]


@pytest.mark.slow
def test_trainer_two_processes_equal_one_with_cached_accumulation(data_root, tmp_path):
    """With SyncBN, micro-batch k of 2 processes holds the images of micro-batch k of 1 process (common.batches
    lays a step out micro-batch major), so the batch-norm statistics agree too and a cached step on 2 processes
    is the cached step on 1 (float64: summation order only, see test_trainer_methods)."""
    sgd = ["max_steps=2", "optim.name=sgd", "optim.momentum=0.0", "optim.warmup_epochs=0", "optim.lr=0.5",
           "online_probe=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    single = run("stochcon/train.py", tiny(data_root, one, *sgd, "method.name=stochcon"))
    assert single.returncode == 0, single.stderr[-2000:]
    launched = launch("stochcon/train.py", tiny(data_root, two, *sgd, "method.name=stochcon"), processes=2)
    assert launched.returncode == 0, launched.stderr[-3000:]
    states = [load_checkpoint(latest_checkpoint(out))["model"] for out in (one, two)]
    for key, value in states[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(states[1][key], value, rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.slow
def test_sigterm_inside_an_accumulation_cycle_resumes_exactly(data_root, tmp_path, fresh_accelerate):
    """SIGTERM between the micro-batches of step 3 (during pass 2 of its first micro-batch): the run finishes
    that step, saves it and stops; resumed, it ends with the weights of the uninterrupted run."""
    calls = {"embed": 0}
    signal_at = 3 * 4 + 3  # embed runs 2 K = 4 times a step: the 3rd call of step 3 (0-based) is pass 2, micro 0

    def signalling(cfg, backbone, feature_dim):
        method = stochcon_train.build_method(cfg, backbone, feature_dim)
        embed = method.embed

        def counted(views, labels):
            calls["embed"] += 1
            if calls["embed"] == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return embed(views, labels)

        method.embed = counted
        return method

    def fit(out, build, *extra):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        cfg = load_config(stochcon_train.CONFIG_SCHEMA, tiny(data_root, out, "max_steps=5", *extra))
        return Trainer(cfg, build).fit()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
        fit(straight, stochcon_train.build_method)
        with pytest.raises(Preempted, match="saved step 4"):
            fit(interrupted, signalling)
        assert calls["embed"] == signal_at + 1  # the step finished: pass 2 ran its last micro-batch, then it saved
        fit(interrupted, stochcon_train.build_method, "resume=true")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    states = [load_checkpoint(latest_checkpoint(out))["model"] for out in (straight, interrupted)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_a_non_finite_cached_step_is_skipped_without_a_trace_or_named(data_root, tmp_path, fresh_accelerate):
    """A diverging run (SGD at lr 1e30) on the cached path: on_nonfinite=skip drops its steps and puts the
    batch-norm buffers back (both passes moved them), on_nonfinite=error names the step."""
    bad = ["max_steps=4", "dtype=float32", "optim.name=sgd", "optim.lr=1e30", "optim.warmup_epochs=0",
           "max_skipped_fraction=1"]  # float32: the weights overflow (float64 would hold 1e30 squared)
    cfg = load_config(stochcon_train.CONFIG_SCHEMA, tiny(data_root, tmp_path / "skip", *bad, "on_nonfinite=skip"))
    results = Trainer(cfg, stochcon_train.build_method).fit()
    assert results["skipped_steps"] > 0
    state = load_checkpoint(latest_checkpoint(tmp_path / "skip"))["model"]
    buffers = [v for k, v in state.items() if k.endswith(("running_var", "running_mean"))]
    assert buffers and all(bool(torch.isfinite(v).all()) for v in buffers)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = load_config(stochcon_train.CONFIG_SCHEMA, tiny(data_root, tmp_path / "error", *bad))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
        Trainer(cfg, stochcon_train.build_method).fit()
