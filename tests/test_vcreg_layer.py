"""The fast VCReg layer against its naive autograd loss, each reading's own loss and Algorithm 1; Appendix A's
mean removal; its scaling with the micro-batch size, accumulation, world size and fp16 loss scale (the losses on
hand-checked values: ``test_vcreg_losses.py``).

Tolerances: comparisons run in float64 wherever the two sides differ only in the order of summation; their
rounding error is below ``n * 2**-53`` relative to the largest term (``n`` <= 400 here, so < 1e-13), and
``_close`` allows 1e-10 of the larger side's largest entry. The bf16 and fp16 tests state their own bounds.
"""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from common.backward_scale import BackwardScale, attach_backward_scale
from vcreg import NORMALIZATIONS, VCReg
from vcreg.losses import covariance_loss, variance_loss
from vcreg.naive import NaiveVCReg, naive_vcreg_loss, pop_naive_losses


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float64 summation order (module docstring)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10 * float(expected.abs().max()))


def _features(shape, seed=0, dtype=torch.float64):
    """Features whose channels have variances both below and above 1, so the hinge is partly active."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    channel_dim = 1 if len(shape) == 4 else -1
    channels = shape[channel_dim]
    view = [1] * len(shape)
    view[channel_dim] = channels
    mixing = torch.randn(channels, channels, generator=g, dtype=torch.float64) * 0.3  # correlated channels
    x = x * torch.linspace(0.3, 1.8, channels, dtype=torch.float64).view(view) + 0.5
    x = torch.movedim(torch.movedim(x, channel_dim, -1) @ (torch.eye(channels, dtype=torch.float64) + mixing),
                      -1, channel_dim)
    return x.to(dtype)


def _rows_with(n: int, mean: torch.Tensor, covariance: torch.Tensor, seed: int) -> torch.Tensor:
    """``n`` float64 rows whose mean and unbiased covariance are exactly ``mean`` and ``covariance``."""
    z = torch.randn(n, mean.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    whitening = torch.linalg.cholesky(z.T @ z / (n - 1))                       # z's covariance is L L^T
    z = torch.linalg.solve_triangular(whitening, z.T, upper=False).T          # covariance I
    return mean + z @ torch.linalg.cholesky(covariance).T


# every variance below 1 (the hinge acts on every channel, far from its threshold) and correlated channels
MEAN = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5], dtype=torch.float64)
COVARIANCE = torch.tensor([[0.30, 0.10, 0.00, 0.05, 0.00, 0.02],
                           [0.10, 0.50, 0.12, 0.00, 0.03, 0.00],
                           [0.00, 0.12, 0.40, 0.08, 0.00, 0.01],
                           [0.05, 0.00, 0.08, 0.60, 0.15, 0.00],
                           [0.00, 0.03, 0.00, 0.15, 0.20, 0.04],
                           [0.02, 0.00, 0.01, 0.00, 0.04, 0.35]], dtype=torch.float64)
TERMS = {"variance": (1.28, 0.0), "covariance": (0.0, 0.16)}  # (alpha, beta) isolating one term


def _update(layer: VCReg, rows: torch.Tensor) -> torch.Tensor:
    """The layer's gradient for a linear map ``A`` (at ``A = I``) applied to ``rows`` just before it, with no
    task loss: ``sum_i x_i g_i^T`` over the rows, what any parameter acting on the features receives."""
    linear_map = torch.eye(rows.shape[1], dtype=rows.dtype, requires_grad=True)
    out = layer(rows @ linear_map)
    (grad,) = torch.autograd.grad(out, linear_map, torch.zeros_like(out))
    return grad


@pytest.mark.parametrize("shape", [(4, 12, 5, 6), (6, 9, 16), (64, 10)], ids=["NCHW", "NLC", "NC"])
@pytest.mark.parametrize("delta", [None, 0.05], ids=["squared", "smooth_l1"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_fast_gradient_equals_naive_gradient(shape, delta, normalization):
    x = _features(shape).requires_grad_()
    rows = x.numel() // (shape[1] if len(shape) == 4 else shape[-1])
    # a mean-type task loss's gradient: of order 1/n per row
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / rows
    layer = VCReg(alpha=1.28, beta=0.16, delta=delta, normalization=normalization)
    (fast,) = torch.autograd.grad(layer(x), x, upstream)
    naive_loss = naive_vcreg_loss(x, 1.28, 0.16, delta=delta, normalization=normalization)
    (naive,) = torch.autograd.grad((x * upstream).sum() + naive_loss, x)
    _close(fast, naive)
    # the comparison is not vacuous: what the regulariser adds is 1e6 times the tolerance above
    assert (fast - upstream).norm() > 1e-4 * upstream.norm()
    if delta is not None:  # the clamp is active on this input, so smooth-L1 differs from squared
        (squared,) = torch.autograd.grad(VCReg(1.28, 0.16, normalization=normalization)(x), x, upstream)
        assert (squared - fast).norm() > 1e-3 * (fast - upstream).norm()


# each reading's own loss on [n, d] rows: Algorithm 1 as printed weighs eq. 4 by beta (n - 1) (its covariance
# gradient has no 1/(n - 1)); eqs. 3-4 as written (batch_mean) weigh it by beta
READING_COVARIANCE_WEIGHT = {"algorithm1": lambda beta, n: beta * (n - 1), "batch_mean": lambda beta, n: beta}


@pytest.mark.parametrize("delta", [None, 0.05], ids=["squared", "smooth_l1"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_each_reading_is_the_gradient_of_its_own_loss(normalization, delta):
    """float64, the paper's alpha 0.16 and beta 0.01 on one micro-batch of one process: the layer's added
    gradient is autograd of ``alpha l_var + w l_cov`` (eqs. 3-4, ``vcreg.losses``), ``w = beta (n - 1)`` for
    Algorithm 1 as printed and ``w = beta`` for eqs. 3-4 as written (``batch_mean``)."""
    alpha, beta = 0.16, 0.01
    x = _features((200, 6)).requires_grad_()
    n = x.shape[0]
    (fast,) = torch.autograd.grad(VCReg(alpha, beta, delta=delta, normalization=normalization)(x), x,
                                  torch.zeros_like(x))
    weight = READING_COVARIANCE_WEIGHT[normalization](beta, n)
    own_loss = alpha * variance_loss(x) + weight * covariance_loss(x, delta)
    (expected,) = torch.autograd.grad(own_loss, x)
    _close(fast, expected)
    # the covariance term is really there: without it the gradient differs by far more than the tolerance
    (variance_only,) = torch.autograd.grad(alpha * variance_loss(x), x)
    assert (expected - variance_only).norm() > 1e-6 * expected.norm()


def test_channels_last_and_bf16_maps_take_the_same_gradient():
    """A contiguous map is regularised as [N, C, H*W], a channels-last one as [n, C] rows: same gradient in
    float64 up to summation order. bf16 features (statistics in float32, gradient back in bf16): the added
    part ``a`` and the sum ``g + a`` are each rounded once to bf16 (relative error <= 2^-8 each) after float32
    statistics (relative error < n * 2^-24 < 2^-16 at n = 120), so against the float64 gradient of the same
    bf16-rounded input the error is at most 2^-8 (|a| + |g + a|) + 2^-16 |a|."""
    x = _features((4, 12, 5, 6)).requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = VCReg(alpha=1.28, beta=0.16)
    (contiguous,) = torch.autograd.grad(layer(x), x, upstream)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    (channels_last,) = torch.autograd.grad(layer(x_last), x_last, upstream)
    _close(channels_last, contiguous)
    x_bf16, up_bf16 = x.detach().bfloat16().requires_grad_(), upstream.bfloat16()
    (bf16,) = torch.autograd.grad(layer(x_bf16), x_bf16, up_bf16)
    assert bf16.dtype == torch.bfloat16
    x_exact = x_bf16.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(layer(x_exact), x_exact, up_bf16.double())
    added = exact - up_bf16.double()
    bound = 2.0 ** -8 * (added.abs() + exact.abs()) + 2.0 ** -16 * added.abs()
    assert bool(((bf16.double() - exact).abs() <= bound).all())


def test_added_gradient_matches_algorithm_1_written_out():
    x = _features((5, 7, 4)).requires_grad_()
    alpha, beta, eps = 0.64, 0.08, 1e-5
    (grad,) = torch.autograd.grad(VCReg(alpha, beta, eps)(x), x, torch.zeros_like(x))
    rows = x.detach().reshape(-1, 4)
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
    _close(grad.reshape(-1, 4), expected)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("term", TERMS)
def test_accumulated_micro_batches_give_one_batch_update(normalization, term):
    """K micro-batches (BackwardScale(accumulation_steps=K)) vs one batch of K m rows, every batch with the
    same mean and covariance, so only the statistics' sample sizes differ. Mean-type terms (the variance
    term, and batch_mean's covariance term) give exactly one batch's update. Algorithm 1's covariance term
    is a sum over rows of x x^T offdiag(C): the micro-batches' rows, each centred on its own mean, carry
    K (m - 1) of the batch's K m - 1 degrees of freedom, and nothing else differs. Without the scale,
    the variance term came out K times too strong."""
    accumulation, m = 4, 30
    alpha, beta = TERMS[term]
    one_batch = _update(VCReg(alpha, beta, normalization=normalization),
                        _rows_with(accumulation * m, MEAN, COVARIANCE, seed=0))
    layer = VCReg(alpha, beta, normalization=normalization)
    layer.backward_scale = BackwardScale(accumulation_steps=accumulation)
    accumulated = sum(_update(layer, _rows_with(m, MEAN, COVARIANCE, seed=1 + k)) for k in range(accumulation))
    if normalization == "algorithm1" and term == "covariance":
        _close(accumulated, one_batch * (accumulation * (m - 1) / (accumulation * m - 1)))
    else:
        _close(accumulated, one_batch)
    assert float(one_batch.abs().max()) > 1e-3  # the term is not trivially zero


@pytest.mark.parametrize("term", TERMS)
def test_batch_mean_keeps_the_gradient_scale_at_four_times_the_rows(term):
    """With the same statistics at n and 4n rows, batch_mean's update is identical; Algorithm 1's variance
    term is too, its covariance term grows with the rows as (4n - 1) / (n - 1) (the scatter's degrees of
    freedom), the dependence its docstring states."""
    n = 25
    alpha, beta = TERMS[term]
    for normalization in NORMALIZATIONS:
        layer = VCReg(alpha, beta, normalization=normalization)
        small = _update(layer, _rows_with(n, MEAN, COVARIANCE, seed=0))
        large = _update(layer, _rows_with(4 * n, MEAN, COVARIANCE, seed=1))
        growth = (4 * n - 1) / (n - 1) if (normalization, term) == ("algorithm1", "covariance") else 1.0
        _close(large, small * growth)


def test_batch_mean_is_algorithm_1_with_beta_times_n_minus_1():
    rows = _features((40, 6))
    n = rows.shape[0]
    _close(_update(VCReg(0.64, 0.08 * (n - 1), normalization="batch_mean"), rows),
           _update(VCReg(0.64, 0.08), rows))


def test_forward_is_identity_and_inactive_in_eval():
    x = _features((3, 5, 4, 4)).requires_grad_()
    layer = VCReg(1.0, 1.0)
    assert torch.equal(layer(x), x)
    layer.eval()
    assert layer(x) is x
    naive = NaiveVCReg(1.0, 1.0)
    assert naive(x) is x and naive.loss is not None
    assert torch.equal(pop_naive_losses(naive), naive_vcreg_loss(x, 1.0, 1.0))
    assert naive.loss is None


@pytest.mark.parametrize("shape", [(4, 12, 5, 6), (6, 9, 16), (64, 10)], ids=["NCHW", "NLC", "NC"])
def test_mean_removal_centres_the_forward_pass_and_keeps_a_running_mean(shape):
    """Training: the output is the input minus its batch mean (zero mean per channel) and the running mean
    moves a tenth of the way to that mean, as BatchNorm's; eval: the output is the input minus the running mean."""
    x = _features(shape).requires_grad_()
    layer = VCReg(1.28, 0.16, mean_removal=True).double()
    channel_dim = 1 if len(shape) == 4 else -1
    sample_dims = tuple(i for i in range(len(shape)) if i != channel_dim % len(shape))
    out = layer(x)
    batch_mean = x.detach().mean(sample_dims)
    assert bool((batch_mean.abs() > 0.1).any())  # the input is not centred already
    assert float(out.detach().mean(sample_dims).abs().max()) < 1e-12 * float(x.detach().abs().max())
    _close(layer.running_mean, 0.1 * batch_mean)
    layer(_features(shape, seed=1))  # without grad too: a training forward updates the running mean
    second = _features(shape, seed=1).mean(sample_dims)
    _close(layer.running_mean, 0.9 * 0.1 * batch_mean + 0.1 * second)
    layer.eval()
    view = [1] * len(shape)
    view[channel_dim] = shape[channel_dim]
    _close(layer(x).detach(), x.detach() - layer.running_mean.view(view))
    # a fresh layer takes the running mean's size from a state dict
    fresh = VCReg(1.28, 0.16, mean_removal=True).double()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.running_mean, layer.running_mean)
    assert list(VCReg(1.0, 1.0).state_dict()) == []  # without mean removal the layer holds nothing
    assert torch.equal(VCReg(1.0, 1.0, mean_removal=True).eval()(x), x)  # no training yet: nothing to subtract


@pytest.mark.parametrize("shape", [(4, 12, 5, 6), (6, 9, 16), (64, 10)], ids=["NCHW", "NLC", "NC"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_mean_removal_gradient_is_autograd_of_the_loss_through_the_centring(shape, normalization):
    """float64: with a task loss ``<upstream, y>`` on the centred output ``y = x - mean(x)``, the layer's
    gradient is autograd of ``<upstream, y> + naive_vcreg_loss(y)``, the centring differentiated too."""
    x = _features(shape).requires_grad_()
    rows = x.numel() // (shape[1] if len(shape) == 4 else shape[-1])
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / rows
    layer = VCReg(alpha=1.28, beta=0.16, normalization=normalization, mean_removal=True).double()
    (fast,) = torch.autograd.grad(layer(x), x, upstream)
    channel_dim = 1 if len(shape) == 4 else -1
    sample_dims = tuple(i for i in range(len(shape)) if i != channel_dim % len(shape))
    centred = x - x.mean(sample_dims, keepdim=True)
    loss = (centred * upstream).sum() + naive_vcreg_loss(centred, 1.28, 0.16, normalization=normalization)
    (expected,) = torch.autograd.grad(loss, x)
    _close(fast, expected)
    # the centring's own backward matters: the plain layer's gradient keeps the upstream's mean
    (plain,) = torch.autograd.grad(VCReg(1.28, 0.16, normalization=normalization)(x), x, upstream)
    assert (plain - fast).norm() > 1e-3 * (fast - upstream).norm()


def test_bad_arguments_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        VCReg(-1.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        VCReg(1.0, 0.1, delta=0.0)
    with pytest.raises(ValueError, match="normalization"):
        VCReg(1.0, 0.1, normalization="per_sample")
    with pytest.raises(ValueError, match="shape"):
        VCReg(1.0, 0.1)(torch.randn(2, 2, 2, 2, 2, requires_grad=True))
    with pytest.raises(ValueError, match="at least 2 samples"):
        VCReg(1.0, 0.1)(torch.randn(1, 3, requires_grad=True)).sum().backward()


def test_fp16_autocast_with_a_grad_scaler_matches_the_float64_gradients():
    """Linear -> VCReg -> Linear under CPU fp16 autocast with a real GradScaler at 2^12, attached through
    attach_backward_scale, against the float64 model. fp16 keeps 11 significant bits (u = 2^-11); from the
    inputs to a weight gradient the values are rounded about ten times (x, W1, b1, the first output, the
    upstream gradient, W2, the added gradient, its sum with the upstream, the weight-gradient products),
    the products accumulate in float32 over at most 32 terms, and the statistics (float32, from the
    rounded features) enter the added gradient linearly (covariance) or through C^-1/2 (halving relative
    errors); every variance here is <= 0.5, so no channel is near the hinge's threshold at 1. That is about
    20 u = 1% normwise; we allow 2% per parameter. The regulariser makes up ~75% of W1's gradient, so a
    missing or doubled loss scale (factor 2^12 or 2) fails by far more."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), VCReg(1.28, 0.16), torch.nn.Linear(8, 3))
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    reference_model = torch.nn.Sequential(torch.nn.Linear(6, 8), VCReg(1.28, 0.16), torch.nn.Linear(8, 3))
    reference_model.load_state_dict(model.state_dict())
    reference_model.double()
    reference_model(x.double()).square().mean().backward()
    with torch.no_grad():
        assert float(reference_model[0](x.double()).var(0).max()) <= 0.5
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="attach_backward_scale"):
        model(x)  # no BackwardScale attached: refused, it could not know the loss scale
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    assert attach_backward_scale(model, BackwardScale(scaler)) == 1
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    assert out.dtype == torch.float16
    scaler.scale(out.float().square().mean()).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    for p, expected in zip(model.parameters(), reference_model.parameters()):
        error = (p.grad.double() - expected.grad).norm()
        assert error <= 0.02 * expected.grad.norm()
    task_only = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)).double()
    task_only[0].load_state_dict(reference_model[0].state_dict())
    task_only[1].load_state_dict(reference_model[2].state_dict())
    task_only(x.double()).square().mean().backward()
    regulariser_share = (reference_model[0].weight.grad - task_only[0].weight.grad).norm()
    assert regulariser_share > 0.5 * reference_model[0].weight.grad.norm()


def test_loss_scale_and_world_size_factors_are_exact():
    """The loss scale multiplies the whole added gradient; without all_reduce the world size changes nothing
    (DDP's average over ranks is the mean the regulariser wants)."""
    rows = _features((40, 6)).requires_grad_()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaler.scale(torch.zeros((), requires_grad=True))  # creates the scale tensor, as the trainer's first step
    plain = _update(VCReg(1.28, 0.16), rows.detach())
    for scale, factor in ((BackwardScale(scaler), 2.0 ** 12), (BackwardScale(world_size=8), 1.0)):
        layer = VCReg(1.28, 0.16)
        layer.backward_scale = scale
        _close(_update(layer, rows.detach()), plain * factor)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GLOO_SETTINGS = [(normalization, all_reduce) for normalization in NORMALIZATIONS for all_reduce in (True, False)]


def _all_reduce_worker(rank: int, world: int, port: int, rows: np.ndarray, out_dir: str) -> None:
    """Each rank's added gradient on its shard for every setting, written to a file: results travel by file,
    never as tensors through a queue from a process that may have exited."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = torch.from_numpy(rows).chunk(world)[rank].clone().requires_grad_()
        results = {}
        for normalization, all_reduce in GLOO_SETTINGS:
            for term, (alpha, beta) in TERMS.items():
                layer = VCReg(alpha, beta, eps=0.0, all_reduce=all_reduce, normalization=normalization)
                layer.backward_scale = BackwardScale(world_size=world)
                (grad,) = torch.autograd.grad(layer(shard), shard, torch.zeros_like(shard))
                results[f"{normalization}_{all_reduce}_{term}"] = grad.numpy()
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_matches_the_global_batch_and_keeps_the_strength(tmp_path):
    """Two gloo processes, float64. The second shard is the first reflected about their common mean, so the
    shards' means and scatters are equal and the global covariance is r = W (m - 1) / (W m - 1) times each
    shard's. Per rank: the single-process gradient of the shard. all_reduce: the single-process gradient
    of the global batch, times W for the mean-type terms (DDP divides by W) and times 1 for Algorithm 1's
    covariance sum. So all_reduce changes the statistics only: against per rank, the covariance term
    scales by r (Algorithm 1; it used to be W) or r^2 (batch_mean: r from C, r from W / (W m - 1)), the
    variance term by r * r^-1/2 (eps = 0, every variance below 1)."""
    world, m = 2, 40
    first = _rows_with(m, MEAN, COVARIANCE, seed=5)
    rows = torch.cat([first, 2 * MEAN - first])
    ctx, port = mp.get_context("spawn"), _free_port()
    procs = [ctx.Process(target=_all_reduce_worker, args=(r, world, port, rows.numpy(), str(tmp_path)))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]
    r = world * (m - 1) / (world * m - 1)
    for normalization in NORMALIZATIONS:
        for term, (alpha, beta) in TERMS.items():
            full = rows.clone().requires_grad_()
            layer = VCReg(alpha, beta, eps=0.0, normalization=normalization)
            (global_grad,) = torch.autograd.grad(layer(full), full, torch.zeros_like(full))
            mean_type = term == "variance" or normalization == "batch_mean"
            ratio = {"variance": math.sqrt(r), "covariance": r if normalization == "algorithm1" else r * r}[term]
            for rank in range(world):
                shard = rows.chunk(world)[rank].clone().requires_grad_()
                (local_grad,) = torch.autograd.grad(layer(shard), shard, torch.zeros_like(shard))
                reduced = torch.from_numpy(results[rank][f"{normalization}_True_{term}"])
                per_rank = torch.from_numpy(results[rank][f"{normalization}_False_{term}"])
                _close(reduced, global_grad.chunk(world)[rank] * (world if mean_type else 1))
                _close(per_rank, local_grad)
                _close(reduced, per_rank * ratio)
