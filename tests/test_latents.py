import itertools
import math

import pytest
import torch

import common.distributed
from stochcon.latents import (
    GumbelBernoulli,
    IsotropicGaussian,
    logistic_noise,
    sample_gumbel_bernoulli,
)

# Every statistical check below fails with probability at most DELTA for a correct sampler (per checked value).
DELTA = 1e-6


def bernoulli_mean_halfwidth(p: torch.Tensor, n: int, delta: float = DELTA) -> torch.Tensor:
    """t with P(|mean of n Bernoulli(p) - p| >= t) <= delta, from Bernstein's inequality
    P(...) <= 2 exp(-n t^2 / (2 p (1 - p) + 2 t / 3)) (summands bounded by 1): the positive root of
    n t^2 - (2 L / 3) t - 2 L p (1 - p) = 0 with L = log(2 / delta). Unlike a normal approximation it holds
    for p near 0 or 1, where n p is small."""
    p = p.double()
    log_term = math.log(2 / delta)
    return ((2 * log_term / 3) + torch.sqrt((2 * log_term / 3) ** 2 + 8 * n * log_term * p * (1 - p))) / (2 * n)


def normal_mean_halfwidth(n: int, delta: float = DELTA) -> float:
    """t with P(|mean of n N(0, 1)| >= t) <= delta: the mean is N(0, 1/n) and P(|N(0,1)| >= x) <= 2 e^(-x^2/2)."""
    return math.sqrt(2 * math.log(2 / delta) / n)


def chi_square_mean_interval(n: int, delta: float = DELTA) -> tuple[float, float]:
    """[lo, hi] holding the mean of n squared N(0, 1) draws except with probability <= delta (Laurent & Massart
    2000: P(X/n - 1 >= 2 sqrt(x/n) + 2x/n) <= e^-x and P(1 - X/n >= 2 sqrt(x/n)) <= e^-x, each at delta/2)."""
    x = math.log(2 / delta)
    return 1 - 2 * math.sqrt(x / n), 1 + 2 * math.sqrt(x / n) + 2 * x / n

# sigmoid of these logits, by hand: 1 / (1 + e^2) = 0.1192, 1 / (1 + e^0.5) = 0.3775, 0.5,
# 1 / (1 + e^-1) = 0.7311, 1 / (1 + e^-3) = 0.9526.
LOGITS = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
SIGMOID = torch.tensor([0.1192, 0.3775, 0.5, 0.7311, 0.9526])


def test_hand_checked_sigmoid_values():
    # SIGMOID is written to 4 decimals: rounding error <= 0.5e-4; float32 adds ~1e-7.
    torch.testing.assert_close(torch.sigmoid(LOGITS), SIGMOID, atol=0.5e-4 + 1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_hard_samples_are_binary_with_mean_sigmoid_logits(temperature):
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    samples = sample_gumbel_bernoulli(LOGITS.expand(n, -1), temperature, hard=True, generator=gen)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(LOGITS.double())
    assert ((samples.double().mean(0) - p).abs() < bernoulli_mean_halfwidth(p, n)).all()


def test_relaxed_samples_lie_strictly_inside_unit_interval():
    gen = torch.Generator().manual_seed(1)
    logits = LOGITS.double().expand(10_000, -1)
    samples = sample_gumbel_bernoulli(logits, 1.0, hard=False, generator=gen)
    assert samples.min() > 0 and samples.max() < 1
    assert not torch.isin(samples, torch.tensor([0.0, 1.0], dtype=samples.dtype)).any()


def test_relaxed_samples_sharpen_as_temperature_drops():
    logits = LOGITS.double().expand(5_000, -1)
    distance_from_half = []
    for temperature in [2.0, 1.0, 0.5, 0.1]:
        gen = torch.Generator().manual_seed(2)  # the same noise at every temperature
        samples = sample_gumbel_bernoulli(logits, temperature, hard=False, generator=gen)
        distance_from_half.append((samples - 0.5).abs())
    for warmer, colder in itertools.pairwise(distance_from_half):
        assert (colder >= warmer).all()
        assert colder.mean() > warmer.mean()
    # At temperature T the distance to {0, 1} is sigmoid(-|l + L| / T); the logistic density is <= 1/4, so its
    # mean is <= (1/4) 2 int_0^inf sigmoid(-x / T) dx = T log(2) / 2 = 0.0347 at T = 0.1. Hoeffding on the
    # 25,000 independent values in [0, 1/2]: the sample mean exceeds that by 0.01 with P <= exp(-2 n 0.01^2 / 0.25)
    # = e^-20.
    coldest = 0.5 - distance_from_half[-1]
    assert coldest.mean() < 0.1 * math.log(2) / 2 + 0.01


def test_straight_through_gradient_equals_relaxed_gradient():
    weights = torch.randn(64, 5, generator=torch.Generator().manual_seed(3))
    grads = {}
    for hard in (False, True):
        logits = LOGITS.expand(64, -1).clone().requires_grad_(True)
        sample = sample_gumbel_bernoulli(logits, 0.5, hard=hard, generator=torch.Generator().manual_seed(4))
        (weights * sample).sum().backward()
        grads[hard] = logits.grad
    assert grads[False].abs().sum() > 0
    torch.testing.assert_close(grads[True], grads[False], atol=0, rtol=0)


@pytest.mark.parametrize("hard", [True, False])
def test_sampler_matches_autograd_of_the_appendix_listing(hard):
    """Appendix A.1 in plain autograd: z = sigmoid((l + n) / t); hard: (1[z >= 0.5] - z).detach() + z. In float64:
    the fused backward multiplies in another order than autograd's chain, nothing else differs."""
    gen = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(256, 64, generator=gen, dtype=torch.float64)).requires_grad_(True)
    upstream = torch.randn(256, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sample = sample_gumbel_bernoulli(logits, 0.3, hard=hard, generator=torch.Generator().manual_seed(8))
    sample.backward(upstream)

    reference_logits = logits.detach().clone().requires_grad_(True)
    noise = logistic_noise(logits.shape, logits, torch.Generator().manual_seed(8))
    relaxed = torch.sigmoid((reference_logits + noise) / 0.3)
    reference = ((relaxed >= 0.5).double() - relaxed).detach() + relaxed if hard else relaxed
    reference.backward(upstream)
    if hard:
        assert torch.equal(sample, (reference > 0.5).double())  # exactly 0/1, the same bits
    else:
        torch.testing.assert_close(sample, reference)
    torch.testing.assert_close(logits.grad, reference_logits.grad)


def test_relaxed_gradient_matches_closed_form():
    # d sigmoid((l + n) / t) / dl = s (1 - s) / t, with the same noise n; float64, where only the order of the
    # products can differ.
    logits = LOGITS.double().requires_grad_(True)
    sample = sample_gumbel_bernoulli(logits, 0.5, generator=torch.Generator().manual_seed(5))
    sample.sum().backward()
    s = sample.detach()
    torch.testing.assert_close(logits.grad, s * (1 - s) / 0.5)


def test_nonpositive_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        sample_gumbel_bernoulli(LOGITS, 0.0)


def test_gumbel_bernoulli_module_train_and_eval():
    module = GumbelBernoulli(hard=True, temperature=0.1)
    logits = torch.tensor([[-1.0, 0.0, 2.0]])
    torch.manual_seed(0)
    assert set(module(logits.expand(100, -1)).unique().tolist()) <= {0.0, 1.0}
    module.eval()
    assert module(logits).tolist() == [[0.0, 1.0, 1.0]]
    soft = GumbelBernoulli(hard=False, temperature=0.5).eval()
    torch.testing.assert_close(soft(logits), torch.sigmoid(logits / 0.5))


def test_gaussian_gradients_reach_mu_and_sigma():
    # float64: autograd and the hand formula differ only in the order of the products and sums.
    torch.manual_seed(0)
    gaussian = IsotropicGaussian(latent_dim=4).double()
    mu = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    phi_var = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    z = gaussian(mu, phi_var)
    z.pow(2).sum().backward()
    # z = mu + sigma * eps: dL/dmu = 2 z, dL/dsigma = 2 z eps.
    torch.testing.assert_close(mu.grad, 2 * z.detach())
    torch.manual_seed(1)
    eps = torch.randn(8, 4, dtype=torch.float64)
    sigma = gaussian.std(phi_var).detach()
    torch.testing.assert_close(z.detach(), mu.detach() + sigma * eps)
    dsigma = 2 * z.detach() * eps
    dpre = dsigma * torch.sigmoid(gaussian.scale(phi_var).detach())  # softplus' = sigmoid
    torch.testing.assert_close(gaussian.scale.bias.grad, dpre.sum(0))
    assert phi_var.grad is not None and phi_var.grad.abs().sum() > 0


def test_gaussian_samples_have_the_predicted_scale_and_eval_returns_mean():
    torch.manual_seed(0)
    gaussian = IsotropicGaussian(latent_dim=3)
    with torch.no_grad():
        gaussian.scale.weight.zero_()
        gaussian.scale.bias.fill_(math.log(math.e - 1))  # softplus = 1
    n = 20_000
    mu = torch.tensor([[1.0, -2.0, 0.5]]).expand(n, -1)
    z = gaussian(mu, torch.zeros_like(mu))
    eps = (z - mu).double()  # sigma = 1: standard normal draws
    assert (eps.mean(0).abs() < normal_mean_halfwidth(n)).all()
    low, high = chi_square_mean_interval(n)
    assert ((eps**2).mean(0) > low).all() and ((eps**2).mean(0) < high).all()
    gaussian.eval()
    assert torch.equal(gaussian(mu[:2]), mu[:2])


def test_gaussian_requires_variance_input_in_training():
    with pytest.raises(ValueError, match="phi_var"):
        IsotropicGaussian(latent_dim=2)(torch.zeros(1, 2))


BF16 = torch.bfloat16


def test_noise_and_samples_are_at_least_float32_under_bf16_autocast():
    """Under bf16 autocast the logits and means are bf16; the noise, the sample and the scale are float32 (and
    float64 stays float64)."""
    with torch.autocast("cpu", dtype=BF16):
        logits = torch.nn.Linear(3, 4)(torch.randn(5, 3))
        assert logits.dtype == BF16  # the autocast is real
        assert logistic_noise(logits.shape, logits).dtype == torch.float32
        assert sample_gumbel_bernoulli(logits, 0.5).dtype == torch.float32
        assert sample_gumbel_bernoulli(logits, 0.5, hard=True).dtype == torch.float32
        gaussian = IsotropicGaussian(latent_dim=4)
        assert gaussian.std(logits).dtype == torch.float32
        assert gaussian(logits, logits).dtype == torch.float32
        assert GumbelBernoulli(hard=False).eval()(logits).dtype == torch.float32
        assert sample_gumbel_bernoulli(logits.double(), 0.5).dtype == torch.float64
    logits = logits.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=BF16):
        sample_gumbel_bernoulli(logits, 0.5).sum().backward()
    assert logits.grad.dtype == BF16  # the gradient comes back in the logits' own dtype


def test_bf16_draws_equal_float32_draws():
    """The same seed gives the same bits and the same Gaussian sample from bf16 logits under autocast as from the
    same values in float32 without it: the noise is drawn and added in float32 either way."""
    gen = torch.Generator().manual_seed(10)
    values = (4 * torch.randn(64, 32, generator=gen)).to(BF16)  # exactly representable in both dtypes
    bits = GumbelBernoulli(hard=True, temperature=0.3)
    gaussian = IsotropicGaussian(latent_dim=32)
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=BF16):
        bits_bf16, z_bf16 = bits(values), gaussian(values, values.float())
        sigma = gaussian.std(values.float())  # the scale Linear runs in bf16 under autocast
    torch.manual_seed(11)
    bits_fp32 = bits(values.float())
    eps = torch.randn(64, 32)
    assert torch.equal(bits_bf16, bits_fp32)
    torch.testing.assert_close(z_bf16, values.float() + sigma * eps, atol=0, rtol=0)


def test_hard_bits_from_bf16_logits_have_bernoulli_means():
    """Drawn in bf16 the logistic noise tops out at +4.84 and u rounded to 0 gives -87.5, so logit 10 would give
    mean 0.998 and logit -6 mean 0 (expected 1 - 4.5e-5 and 0.0025): each mean must lie within the Bernstein
    half-width of sigmoid(logit)."""
    n = 200_000
    logits = torch.tensor([10.0, -6.0, -2.0, 0.0, 3.0], dtype=BF16)
    module = GumbelBernoulli(hard=True, temperature=0.5)
    torch.manual_seed(12)
    with torch.autocast("cpu", dtype=BF16):
        samples = module(logits.expand(n, -1))
    p = torch.sigmoid(logits.double())
    assert ((samples.double().mean(0) - p).abs() < bernoulli_mean_halfwidth(p, n)).all()


def test_noise_per_sample_is_the_same_for_any_number_of_processes(monkeypatch):
    """Two views of a global batch of 8 on one process, and the same global batch split over 2 or 4 ranks: every
    sample of every view gets the same float32 noise from bf16 logits."""
    logits = torch.zeros(2 * 8, 16, dtype=BF16)  # 2 views x 8 samples
    torch.manual_seed(13)
    single = logistic_noise(logits.shape, logits, groups=2).view(2, 8, 16)
    for world in (2, 4):
        local = 8 // world
        for rank in range(world):
            monkeypatch.setattr(common.distributed, "world_size", lambda world=world: world)
            monkeypatch.setattr(common.distributed, "rank", lambda rank=rank: rank)
            torch.manual_seed(13)
            mine = logistic_noise(torch.Size([2 * local, 16]), logits, groups=2).view(2, local, 16)
            assert torch.equal(mine, single[:, rank * local : (rank + 1) * local])
