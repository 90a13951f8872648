"""The Barlow Twins loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", Section 2, Equations 1-2)."""

from __future__ import annotations

import torch


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3,
                      eps: float = 1e-5) -> torch.Tensor:
    """L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2   (Eq. 1)

    C = z1_hat^T z2_hat / N is the cross-correlation of the two views' embeddings [N, D] (Eq. 2), each dimension
    standardised over the batch: z_hat = (z - mean) / sqrt(var + eps), var the biased batch variance.
    """
    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal
