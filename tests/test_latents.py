import itertools
import math

import pytest
import torch

from stochcon.latents import (
    GumbelBernoulli,
    IsotropicGaussian,
    logistic_noise,
    sample_gumbel_bernoulli,
)

# sigmoid of these logits, by hand: 1 / (1 + e^2) = 0.1192, 1 / (1 + e^0.5) = 0.3775, 0.5,
# 1 / (1 + e^-1) = 0.7311, 1 / (1 + e^-3) = 0.9526.
LOGITS = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
SIGMOID = torch.tensor([0.1192, 0.3775, 0.5, 0.7311, 0.9526])


def test_hand_checked_sigmoid_values():
    torch.testing.assert_close(torch.sigmoid(LOGITS), SIGMOID, atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_hard_samples_are_binary_with_mean_sigmoid_logits(temperature):
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    samples = sample_gumbel_bernoulli(LOGITS.expand(n, -1), temperature, hard=True, generator=gen)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    # Bernoulli standard error is at most 0.5 / sqrt(n) = 0.0025; allow 4 of them.
    torch.testing.assert_close(samples.mean(0), SIGMOID, atol=0.01, rtol=0)


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
    # At temperature 0.1 the samples are almost binary: the mean distance to {0, 1} is small.
    coldest = 0.5 - distance_from_half[-1]
    assert coldest.mean() < 0.05


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
    """Appendix A.1 in plain autograd: z = sigmoid((l + n) / t); hard: (1[z >= 0.5] - z).detach() + z."""
    logits = (3 * torch.randn(256, 64, generator=torch.Generator().manual_seed(6))).requires_grad_(True)
    upstream = torch.randn(256, 64, generator=torch.Generator().manual_seed(7))
    sample = sample_gumbel_bernoulli(logits, 0.3, hard=hard, generator=torch.Generator().manual_seed(8))
    sample.backward(upstream)

    reference_logits = logits.detach().clone().requires_grad_(True)
    noise = logistic_noise(logits.shape, logits, torch.Generator().manual_seed(8))
    relaxed = torch.sigmoid((reference_logits + noise) / 0.3)
    reference = ((relaxed >= 0.5).float() - relaxed).detach() + relaxed if hard else relaxed
    reference.backward(upstream)
    if hard:
        assert torch.equal(sample, (reference > 0.5).float())  # exactly 0/1, the same bits
    else:
        torch.testing.assert_close(sample, reference)
    torch.testing.assert_close(logits.grad, reference_logits.grad)


def test_relaxed_gradient_matches_closed_form():
    # d sigmoid((l + n) / t) / dl = s (1 - s) / t, with the same noise n.
    logits = LOGITS.clone().requires_grad_(True)
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
    torch.manual_seed(0)
    gaussian = IsotropicGaussian(latent_dim=4)
    mu = torch.randn(8, 4, requires_grad=True)
    phi_var = torch.randn(8, 4, requires_grad=True)
    torch.manual_seed(1)
    z = gaussian(mu, phi_var)
    z.pow(2).sum().backward()
    # z = mu + sigma * eps: dL/dmu = 2 z, dL/dsigma = 2 z eps.
    torch.testing.assert_close(mu.grad, 2 * z.detach())
    torch.manual_seed(1)
    eps = torch.randn(8, 4)
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
    mu = torch.tensor([[1.0, -2.0, 0.5]]).expand(20_000, -1)
    z = gaussian(mu, torch.zeros_like(mu))
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=0.05, rtol=0)
    gaussian.eval()
    assert torch.equal(gaussian(mu[:2]), mu[:2])


def test_gaussian_requires_variance_input_in_training():
    with pytest.raises(ValueError, match="phi_var"):
        IsotropicGaussian(latent_dim=2)(torch.zeros(1, 2))
