"""The fast VCReg layer against its naive autograd loss, its losses against hand-checked values."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vcreg import VCReg, attach_grad_scaler
from vcreg.losses import covariance_loss, decov_loss, smooth_l1, variance_loss, vicreg_loss
from vcreg.naive import NaiveVCReg, naive_vcreg_loss, pop_naive_losses


def _features(shape, seed=0):
    """Features whose channels have variances both below and above 1, so the hinge is partly active."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    channel_dim = 1 if len(shape) == 4 else -1
    scales = torch.linspace(0.3, 1.8, shape[channel_dim])
    view = [1] * len(shape)
    view[channel_dim] = shape[channel_dim]
    mixing = torch.randn(shape[channel_dim], shape[channel_dim], generator=g) * 0.3  # correlated channels
    x = x * scales.view(view) + 0.5
    x = torch.movedim(torch.movedim(x, channel_dim, -1) @ (torch.eye(shape[channel_dim]) + mixing), -1, channel_dim)
    return x


@pytest.mark.parametrize("shape", [(4, 12, 5, 6), (6, 9, 16), (64, 10)], ids=["NCHW", "NLC", "NC"])
@pytest.mark.parametrize("delta", [None, 0.05], ids=["squared", "smooth_l1"])
def test_fast_gradient_equals_naive_gradient(shape, delta):
    x = _features(shape).requires_grad_()
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    (fast,) = torch.autograd.grad(VCReg(alpha=1.28, beta=0.16, delta=delta)(x), x, upstream)
    (naive,) = torch.autograd.grad((x * upstream).sum() + naive_vcreg_loss(x, 1.28, 0.16, delta=delta), x)
    assert torch.allclose(fast, naive, atol=1e-5, rtol=0)
    # the regulariser really acts: both terms move the gradient away from the upstream one
    assert (fast - upstream).abs().max() > 1e-3
    if delta is not None:  # the clamp is active on this input, so smooth-L1 differs from squared
        (squared,) = torch.autograd.grad(VCReg(alpha=1.28, beta=0.16)(x), x, upstream)
        assert (squared - fast).abs().max() > 1e-4


def test_channels_last_and_bf16_maps_take_the_same_gradient():
    """A contiguous map is regularised as [N, C, H*W], a channels-last one as [n, C] rows: same gradient; bf16
    features (statistics in float32, gradient back in bf16) agree to bf16 precision."""
    x = _features((4, 12, 5, 6)).requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    layer = VCReg(alpha=1.28, beta=0.16)
    (contiguous,) = torch.autograd.grad(layer(x), x, upstream)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    (channels_last,) = torch.autograd.grad(layer(x_last), x_last, upstream)
    assert torch.allclose(contiguous, channels_last, atol=1e-6, rtol=0)
    x_bf16 = x.detach().bfloat16().requires_grad_()
    (bf16,) = torch.autograd.grad(layer(x_bf16), x_bf16, upstream.bfloat16())
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.float(), contiguous, atol=0.05, rtol=0.02)


def test_added_gradient_matches_algorithm_1_written_out():
    x = _features((5, 7, 4)).requires_grad_()
    alpha, beta, eps = 0.64, 0.08, 1e-5
    (grad,) = torch.autograd.grad(VCReg(alpha, beta, eps)(x), x, torch.zeros_like(x))
    rows = x.detach().reshape(-1, 4).double()
    rows = rows - rows.mean(0)
    n, d = rows.shape
    cov = rows.T @ rows / (n - 1)
    expected = torch.zeros_like(rows)
    for i in range(d):  # column by column, as Algorithm 1's text reads
        std_weight = 1 / math.sqrt(cov[i, i] + eps)
        if std_weight > 1:
            expected[:, i] -= alpha / (d * (n - 1)) * std_weight * rows[:, i]
        for j in range(d):
            if i != j:
                expected[:, i] += 4 * beta / (d * (d - 1)) * rows[:, j] * cov[j, i]
    assert torch.allclose(grad.reshape(-1, 4).double(), expected, atol=1e-6)


def test_forward_is_identity_and_inactive_in_eval():
    x = _features((3, 5, 4, 4)).requires_grad_()
    layer = VCReg(1.0, 1.0)
    assert torch.equal(layer(x), x)
    layer.eval()
    assert layer(x) is x
    naive = NaiveVCReg(1.0, 1.0)
    assert naive(x) is x and naive.loss is not None
    assert torch.allclose(pop_naive_losses(naive), naive_vcreg_loss(x, 1.0, 1.0))
    assert naive.loss is None


def test_bad_arguments_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        VCReg(-1.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        VCReg(1.0, 0.1, delta=0.0)
    with pytest.raises(ValueError, match="shape"):
        VCReg(1.0, 0.1)(torch.randn(2, 2, 2, 2, 2, requires_grad=True))
    with pytest.raises(ValueError, match="at least 2 samples"):
        VCReg(1.0, 0.1)(torch.randn(1, 3, requires_grad=True)).sum().backward()


def test_losses_on_hand_checked_example():
    # rows (0, 0), (2, 1), (4, 5): means (2, 2); C = [[4, 5], [5, 7]] with 1/(n-1)
    h = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 5.0]])
    assert variance_loss(h * 0.25, eps=0.0).item() == pytest.approx(((1 - 0.5) + (1 - math.sqrt(7) / 4)) / 2)
    assert covariance_loss(h).item() == pytest.approx(2 * 25 / 2)
    assert covariance_loss(h, delta=2.0).item() == pytest.approx(2 * (2 * 2 * 5 - 4) / 2)
    assert smooth_l1(torch.tensor([0.5, -3.0]), 1.0).tolist() == pytest.approx([0.25, 5.0])
    # DeCov normalises by n: C = [[8/3, 10/3], [10/3, 14/3]], loss = 1/2 * 2 * (10/3)^2
    assert decov_loss(h).item() == pytest.approx((10 / 3) ** 2)


def test_vicreg_loss_on_hand_checked_example():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 5.0]])
    z2 = z1 * 0.25
    out = vicreg_loss(z1, z2)
    invariance = ((z1 - z2) ** 2).mean()
    variance = ((1 - math.sqrt(4 / 16 + 1e-4)) + (1 - math.sqrt(7 / 16 + 1e-4))) / 2  # z1's stds exceed 1: no hinge
    covariance = 2 * 25 / 2 + 2 * (25 / 256) / 2
    assert out["invariance"].item() == pytest.approx(invariance.item())
    assert out["variance"].item() == pytest.approx(variance)
    assert out["covariance"].item() == pytest.approx(covariance)
    assert out["loss"].item() == pytest.approx(25 * invariance.item() + 25 * variance + covariance)


def test_fp16_grad_scaler_scales_the_added_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), VCReg(1.28, 0.16), torch.nn.Linear(8, 3))
    x = torch.randn(32, 6)
    model(x).square().mean().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    assert attach_grad_scaler(model, scaler) == 1
    scaler.scale(model(x).square().mean()).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    for p, expected in zip(model.parameters(), reference):
        assert torch.allclose(p.grad, expected, atol=1e-6)
    # without the scaler attached, the unscaled regulariser gradient would be 2^12 times too small
    attach_grad_scaler(model, None)
    model.zero_grad()
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaler2.scale(model(x).square().mean()).backward()
    scaler2.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    assert not torch.allclose(model[0].weight.grad, reference[0], atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_reduce_worker(rank, world, port, x, upstream, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = x.chunk(world)[rank].clone().requires_grad_()
        # a DDP rank's upstream gradient is world x the global-mean loss's rows
        local_up = upstream.chunk(world)[rank] * world
        results = {}
        for reduce in (True, False):
            (g,) = torch.autograd.grad(VCReg(1.28, 0.16, all_reduce=reduce)(shard), shard, local_up)
            results[reduce] = g
        queue.put((rank, results[True], results[False]))
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_matches_the_global_batch_and_per_rank_does_not():
    world = 2
    x = _features((8, 6, 3, 3))
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    full = x.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(VCReg(1.28, 0.16)(full), full, upstream)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_all_reduce_worker, args=(r, world, port, x, upstream, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {rank: (reduced, local) for rank, reduced, local in (queue.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank in range(world):
        reduced, local = results[rank]
        expected = global_grad.chunk(world)[rank] * world  # DDP divides by world afterwards
        assert torch.allclose(reduced, expected, atol=1e-5)
        assert not torch.allclose(local, expected, atol=1e-4)
