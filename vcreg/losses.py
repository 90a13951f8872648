"""Variance-covariance losses as pure functions of feature tensors.

All functions take ``h`` as ``[n, D]`` rows (samples x features). Equation numbers refer to the VCReg
paper ("Variance-Covariance Regularization Improves Representation Learning") unless
another paper is named.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def covariance_matrix(h: Tensor, unbiased: bool = True) -> Tensor:
    """``C = sum_i (h_i - mean)(h_i - mean)^T / (n - 1)`` (``/ n`` when ``unbiased`` is False), ``[D, D]``."""
    n = h.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    centred = h - h.mean(0)
    return centred.T @ centred / (n - 1 if unbiased else n)


def off_diagonal(c: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix as a flat vector."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def smooth_l1(x: Tensor, delta: float) -> Tensor:
    """Eq. 7: ``x^2`` where ``|x| <= delta``, ``2 delta |x| - delta^2`` elsewhere (gradient ``2 clamp(x, +-delta)``)."""
    absolute = x.abs()
    return torch.where(absolute <= delta, x * x, 2 * delta * absolute - delta * delta)


def variance_loss(h: Tensor, eps: float = 1e-5) -> Tensor:
    """Eq. 3: ``l_var = 1/D sum_i max(0, 1 - sqrt(C_ii + eps))``."""
    std = torch.sqrt(h.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_loss(h: Tensor, delta: float | None = None) -> Tensor:
    """Eq. 4: ``l_cov = 1/(D(D-1)) sum_{i != j} C_ij^2``; with ``delta``, ``C_ij^2`` becomes eq. 7's smooth-L1."""
    d = h.shape[1]
    if d < 2:
        raise ValueError(f"the covariance loss needs at least 2 features, got {d}")
    c = off_diagonal(covariance_matrix(h))
    penalty = c * c if delta is None else smooth_l1(c, delta)
    return penalty.sum() / (d * (d - 1))


def vcreg_loss(h: Tensor, alpha: float, beta: float, eps: float = 1e-5, delta: float | None = None) -> Tensor:
    """Eq. 2: ``alpha * l_var(h) + beta * l_cov(h)``."""
    return alpha * variance_loss(h, eps) + beta * covariance_loss(h, delta)


def decov_loss(h: Tensor) -> Tensor:
    """DeCov (Cogswell et al., 2016, "Reducing Overfitting in Deep Networks by Decorrelating Representations",
    eq. 1): ``1/2 (||C||_F^2 - ||diag(C)||^2)`` with ``C`` normalised by ``n``."""
    c = covariance_matrix(h, unbiased=False)
    return 0.5 * (c.pow(2).sum() - c.diagonal().pow(2).sum())


WLDREG_VARIANTS = ("direct", "det", "logdet")


def wldreg_loss(h: Tensor, gamma: float, variant: str = "direct") -> Tensor:
    """WLD-Reg (Laakom et al., 2023, "WLD-Reg: A Data-dependent Within-layer Diversity Regularizer").

    Unit ``u``'s output on sample ``j`` is ``h[j, u]``. Two units' similarity is the mean over the batch of
    a Gaussian kernel of their outputs, ``s_uv = 1/n sum_j exp(-gamma (h_ju - h_jv)^2)`` (``S`` is ``D x D``
    with ones on its diagonal), and the layer's redundancy is one of the paper's three variants:
    ``direct``: ``sum_{u != v} s_uv``; ``det``: ``-det(S)``; ``logdet``: ``-log det(S)``.
    Minimising it makes the units' outputs differ on every sample. Memory is ``n D^2`` (the kernel of
    every pair on every sample), about 0.5 GB at ``n = 32`` pooled ResNet-50 features of ``D = 2048``.
    """
    if variant not in WLDREG_VARIANTS:
        raise ValueError(f"WLD-Reg variant must be one of {', '.join(WLDREG_VARIANTS)}, not {variant!r}")
    if gamma <= 0:
        raise ValueError(f"WLD-Reg gamma must be > 0, got {gamma}")
    difference = h.unsqueeze(2) - h.unsqueeze(1)                  # [n, D, D]: h_ju - h_jv
    similarity = torch.exp(-gamma * difference.square()).mean(0)  # [D, D], ones on the diagonal
    if variant == "direct":
        return similarity.sum() - similarity.diagonal().sum()
    if variant == "det":
        return -torch.linalg.det(similarity)
    return -torch.linalg.slogdet(similarity).logabsdet


VARIANCE_COMBINES = ("mean", "sum")


def vicreg_loss(z1: Tensor, z2: Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, eps: float = 1e-4, variance_combine: str = "mean") -> dict[str, Tensor]:
    """VICReg (Bardes et al., 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning", eq. 6): ``lambda s(Z, Z') + mu v + nu [c(Z) + c(Z')]``.

    ``s`` is the mean squared error between the embeddings, ``v(Z) = 1/D sum_j max(0, 1 - sqrt(Var z_j + eps))``
    (eq. 1 there, gamma = 1) and ``c(Z) = 1/D sum_{i != j} C(Z)_ij^2`` (eq. 4 there). The two branches'
    variance terms are combined as ``variance_combine`` says: ``"mean"``, ``v = [v(Z) + v(Z')] / 2``, is the
    convention of the authors' released training script and of lightly, the one the 25 / 25 / 1 weights
    were tuned with; ``"sum"``, ``v = v(Z) + v(Z')``, is eq. 6 as printed, twice the variance weight. The
    covariance terms are summed in both. Defaults are the paper's 25 / 25 / 1 and eps 1e-4. Returns the
    total under ``loss`` and the three unweighted terms (``variance`` is the combined ``v``).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"VICReg expects two [N, D] embeddings of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if variance_combine not in VARIANCE_COMBINES:
        raise ValueError(f"variance_combine must be one of {', '.join(VARIANCE_COMBINES)}, not {variance_combine!r}")
    d = z1.shape[1]
    invariance = F.mse_loss(z1, z2)
    variance = variance_loss(z1, eps) + variance_loss(z2, eps)
    if variance_combine == "mean":
        variance = variance / 2
    covariance = sum(off_diagonal(covariance_matrix(z)).pow(2).sum() / d for z in (z1, z2))
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}
