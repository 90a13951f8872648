"""Pathwise-differentiable latent variables of StochCon (Section 3, Appendix A.1).

Two distributions sit between the bottleneck projection phi' = pi(h') and the upsampler rho:

- Gumbel-Bernoulli (binary concrete, Jang et al. 2017; Maddison et al. 2017): relaxed variates in (0, 1),
  optionally forwarded as exact 0/1 values with the straight-through gradient of Appendix A.1.
- Isotropic Gaussian (Kingma & Welling 2014): z' = mu + sigma * eps with a diagonal scale; StochCon takes the
  mean from the stochastic view and the scale from the opposing view (Section 4.2).

In eval mode both modules are deterministic: the Gaussian returns its mean (Appendix A.3) and the
Gumbel-Bernoulli the noise-free limit of its sampler (see `GumbelBernoulli.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config_types import PositiveFloat, PositiveInt
from common.distributed import per_sample_rand


def sample_dtype(like: Tensor) -> torch.dtype:
    """The dtype the latents draw their noise and form their samples in: at least float32 (float64 stays
    float64). Under bf16 autocast the logits are bf16, whose 8-bit significand would cap Logistic noise at +4.84
    and turn 0.2% of the draws into -87.5 (u rounded to 0), biasing every hard bit."""
    return torch.promote_types(like.dtype, torch.float32)


def full_precision(like: Tensor) -> torch.autocast:
    """A context in which no autocast of `like`'s device lowers the precision of the sampling arithmetic."""
    return torch.autocast(like.device.type, enabled=False)


def logistic_noise(
    shape: torch.Size, like: Tensor, generator: torch.Generator | None = None, groups: int = 1
) -> Tensor:
    """Logistic(0, 1) noise log u - log(1 - u), u ~ U(0, 1), in ``sample_dtype(like)``, with u kept away from
    0 and 1 so it stays finite.

    Without a generator, u comes from the global RNG for the global batch (``per_sample_rand``): the rows are
    ``groups`` batches (views) of this rank's samples, and every sample draws the same noise whatever the
    number of processes.
    """
    dtype = sample_dtype(like)
    if generator is None:
        u = per_sample_rand(shape[0] // groups, *shape[1:], dtype=dtype, device=like.device, groups=groups)
    else:
        u = torch.rand(shape, dtype=dtype, device=like.device, generator=generator)
    info = torch.finfo(dtype)
    with full_precision(like):
        return u.clamp_(min=info.tiny, max=1.0 - info.eps).logit_()  # log(u / (1 - u))


class _BinaryConcrete(torch.autograd.Function):
    """z = sigmoid((logits + noise) / T), returned as is (soft) or as 1[logits + noise >= 0] (hard, which is
    1[z >= 0.5]), in the noise's dtype (``sample_dtype``); the backward is always the relaxed sample's
    dz/dlogits = z (1 - z) / T, Appendix A.1's straight-through estimator for hard variates. One saved tensor
    and one fused backward instead of autograd's chain through the sum, division, sigmoid and the
    (hard - z).detach() + z trick: on a 256 x 4096 latent the sampler is a visible part of a small network's
    step."""

    @staticmethod
    def forward(ctx, logits: Tensor, noise: Tensor, temperature: float, hard: bool) -> Tensor:
        with full_precision(logits):
            scaled = (logits.to(noise.dtype) + noise).div_(temperature)
            relaxed = torch.sigmoid(scaled)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        ctx.save_for_backward(relaxed)
        return (scaled >= 0).to(noise.dtype) if hard else relaxed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (relaxed,) = ctx.saved_tensors
        with full_precision(relaxed):
            grad_logits = grad * relaxed * (1 - relaxed) / ctx.temperature
        return grad_logits.to(ctx.logits_dtype), None, None, None


def sample_gumbel_bernoulli(
    logits: Tensor, temperature: float, hard: bool = False, generator: torch.Generator | None = None,
    groups: int = 1,
) -> Tensor:
    """Binary-concrete sample: z = sigmoid((logits + log u - log(1 - u)) / temperature), u ~ U(0, 1).

    With `hard=True` the forward value is 1[z >= 0.5], which is exactly Bernoulli(sigmoid(logits)) because
    z >= 0.5  <=>  logits + Logistic noise >= 0, at any temperature; the gradient is that of the relaxed z
    (straight-through, Appendix A.1). ``groups``: the rows are that many batches (see ``logistic_noise``).
    The noise and the sample are at least float32 (``sample_dtype``) under any autocast.
    """
    if temperature <= 0:
        raise ValueError(f"Gumbel-Bernoulli temperature must be > 0, got {temperature}")
    return _BinaryConcrete.apply(logits, logistic_noise(logits.shape, logits, generator, groups), temperature, hard)


class GumbelBernoulli(nn.Module):
    """Gumbel-Bernoulli latent over logits phi'.

    `temperature` is set by the method each step (cosine 1.0 -> 0.1 in pre-training, fixed 0.1 in
    fine-tuning). Training mode samples; eval mode returns the noise-free limit of the same map, so
    evaluation is deterministic: 1[logits >= 0] for hard variates, sigmoid(logits / temperature) for soft ones.
    """

    def __init__(self, hard: bool, temperature: float = 1.0) -> None:
        super().__init__()
        self.hard = hard
        self.temperature = temperature

    def forward(self, logits: Tensor, groups: int = 1) -> Tensor:
        """``groups``: the rows of ``logits`` are that many batches (views), for per-sample noise."""
        if self.training:
            return sample_gumbel_bernoulli(logits, self.temperature, self.hard, groups=groups)
        if self.hard:
            return (logits >= 0).to(sample_dtype(logits))
        with full_precision(logits):
            return torch.sigmoid(logits.to(sample_dtype(logits)) / self.temperature)

    def extra_repr(self) -> str:
        return f"hard={self.hard}, temperature={self.temperature}"


class IsotropicGaussian(nn.Module):
    """Diagonal Gaussian latent z' ~ N(mu, diag(sigma^2)) with mu = phi and sigma = softplus(W phi_var + b).

    `phi_var` is the projection of the view that sets the scale: the opposing view in StochCon (Section 4.2),
    or the same view for the own-variance ablation, whose scale the paper reports collapsing to 0.
    Sampling is reparameterised (z = mu + sigma * eps), so gradients reach both mu and sigma; eps, sigma and
    z are at least float32 (``sample_dtype``) under any autocast.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.scale = nn.Linear(latent_dim, latent_dim)

    def std(self, phi_var: Tensor) -> Tensor:
        pre_activation = self.scale(phi_var)
        with full_precision(pre_activation):
            return F.softplus(pre_activation.to(sample_dtype(pre_activation)))

    def forward(self, phi: Tensor, phi_var: Tensor | None = None, groups: int = 1) -> Tensor:
        if not self.training:
            return phi
        if phi_var is None:
            raise ValueError(
                "IsotropicGaussian needs phi_var (the projection that sets the scale) in training"
            )
        dtype = sample_dtype(phi)
        eps = per_sample_rand(phi.shape[0] // groups, *phi.shape[1:], dtype=dtype, device=phi.device,
                              normal=True, groups=groups)
        sigma = self.std(phi_var)
        with full_precision(phi):
            return phi.to(dtype) + sigma.to(dtype) * eps


@dataclass
class LatentConfig:
    """The latent's settings (the `method.stochcon` section of a StochCon or supervised-control run)."""

    latent: Literal["bernoulli", "gaussian"] = "bernoulli"  # Gumbel-Bernoulli | isotropic Gaussian (Section 3)
    latent_dim: PositiveInt | None = None  # the latent's width (D_Latent); None: the backbone width (D_Backbone)
    # Algorithm 1's "{pi_theta, rho_theta}: projectors", Linear layers D_Backbone -> D_Latent -> D_Backbone. false
    # feeds h to the latent as it is: only at the backbone width, and for a Bernoulli only over features that
    # can be negative (a ReLU before pooling makes every logit >= 0, so every bit P(1) >= 1/2 and the code all 1).
    projectors: bool = True  # pi and rho on (Algorithm 1) | false: the latent straight on h (the paper's "optional")
    variates: Literal["hard", "soft"] = "hard"  # hard: straight-through 0/1 (Appendix A.1) | soft: relaxed (Figure 4)
    placement: Literal["top", "bottom"] = "top"  # top: global views through the latent | bottom: the local views
    # Not in the paper: a pair whose two views are both placed on the latent is contrasted both ways (each
    # side through the latent once, losses averaged), so every view also gets the exact SimCLR gradient.
    both_directions: bool = False
    # Not in the paper: pi's default initialisation times this gain. The hard bits' noise is set by the logits'
    # scale alone (the Gumbel temperature only shapes the gradient), and LARS changes pi's weight norm little
    # in a short run, so the share of sampled bits that differ from the code stays near where this puts it.
    pi_init_gain: PositiveFloat = 1.0
    gumbel_temperature_start: PositiveFloat = 1.0  # single-cycle cosine 1.0 -> 0.1 over training (Section 4)
    gumbel_temperature_end: PositiveFloat = 0.1  # the cosine's end
    finetune_gumbel_temperature: PositiveFloat = 0.1  # fixed during fine-tuning (Appendix A.3)
    # opposing: the Gaussian's scale from the opposing view (Section 4.2) | own: the ablation whose scale collapses
    gaussian_variance: Literal["opposing", "own"] = "opposing"
