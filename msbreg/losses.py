"""Losses of BYOL and MSBReg (Moon et al., "An Embedding-Dynamic Approach to Self-supervised Learning").

Only the paper's supplementary material is available, not the main text with its equations. The formulas
below are this project's reading of the paper, as written down in issue 4; each term is a separate pure
function of tensors and its weight lives in ``msbreg.msbreg.MSBRegConfig``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2), one direction, mean over the batch.

    L = mean_i (2 - 2 cos(p_i, sg(z_i)))

    ``p`` [N, D]: online predictions; ``z`` [N, D]: target projections of the other view (no gradient flows
    into them). The symmetrised BYOL loss is the mean of ``byol_loss(p1, z2)`` and ``byol_loss(p2, z1)``.
    """
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"byol_loss expects p and z of the same shape [N, D], got {tuple(p.shape)} and "
                         f"{tuple(z.shape)}")
    cosine = F.cosine_similarity(p, z.detach(), dim=-1)
    return (2.0 - 2.0 * cosine).mean()


def multiview_centroid_loss(online_predictions: Tensor, target_projections: Tensor) -> Tensor:
    """Multiview centroid loss of MSBReg (this project's reading of the paper).

    L_mc = mean_k mean_i (2 - 2 cos(p_ki, sg(c_ki))),   c_ki = mean_{j != k} z_ji / ||z_ji||

    Each online prediction p_k of view k is pulled to the centroid of the L2-normalised target projections of
    the other K - 1 views of the same image (the cosine ignores the centroid's norm, so it is the normalised
    centroid). The target projections are normalised before averaging so that every view, a point on the unit
    sphere, weighs the same. With K = 2 the centroid is the other view's projection and L_mc is BYOL's
    symmetrised loss, the mean of ``byol_loss(p1, z2)`` and ``byol_loss(p2, z1)``.

    ``online_predictions`` and ``target_projections``: [K, N, D] with K >= 2 views.
    """
    if online_predictions.shape != target_projections.shape or online_predictions.dim() != 3:
        raise ValueError("multiview_centroid_loss expects online_predictions and target_projections of the same "
                         f"shape [K, N, D], got {tuple(online_predictions.shape)} and "
                         f"{tuple(target_projections.shape)}")
    num_views = online_predictions.shape[0]
    if num_views < 2:
        raise ValueError(f"multiview_centroid_loss needs at least 2 views, got K = {num_views}")
    targets = F.normalize(target_projections.detach(), dim=-1)
    # Leave-one-out centroid of every view in one pass: (sum over all views - own view) / (K - 1).
    centroids = (targets.sum(dim=0, keepdim=True) - targets) / (num_views - 1)
    cosine = F.cosine_similarity(online_predictions, centroids, dim=-1)
    return (2.0 - 2.0 * cosine).mean()


def singular_value_loss(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Singular value loss of MSBReg: spread of the covariance spectrum (this project's reading of the paper).

    L_s = (1/d) sum_i (lambda_i / mean(lambda) - 1)^2 = d * ||C||_F^2 / tr(C)^2 - 1

    where lambda_1..lambda_d are the eigenvalues of the covariance C of the centred batch z [N, d]. The right
    hand side is what is computed (no SVD or eigendecomposition): with Z the centred batch,
    tr(C) is proportional to ||Z||_F^2 and ||C||_F^2 to ||Z^T Z||_F^2 = ||Z Z^T||_F^2 (the smaller Gram matrix is
    used). The normalisation of C cancels. L_s >= 0, it is 0 exactly when the batch is white up to a scale
    (all eigenvalues equal), and it does not change when z is scaled. ``z`` must be the global batch (gather it
    across ranks with ``common.distributed.gather_with_grad`` first). Computed in float32 at least.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"singular_value_loss expects a batch [N, D] with N >= 2, got {tuple(z.shape)}")
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    centred = z - z.mean(dim=0, keepdim=True)
    num_samples, dim = centred.shape
    # Scale-free form: with Z / ||Z||_F the trace term is 1. eps only guards a batch of identical rows.
    centred = centred / centred.norm().clamp_min(eps)
    gram = centred.T @ centred if dim <= num_samples else centred @ centred.T
    return dim * gram.pow(2).sum() - 1.0


def brownian_loss(z: Tensor, generator: torch.Generator | None = None, xi: Tensor | None = None) -> Tensor:
    """Brownian diffusive loss of MSBReg (this project's reading of the paper).

    L_b = mean_i <z_i / ||z_i||, xi_i>,   xi_i drawn uniformly on the unit sphere S^{d-1}, fresh per call

    A random force on every embedding that needs no other sample's coordinates: the gradient with respect to
    z_i is (I - u_i u_i^T) xi_i / (N ||z_i||) with u_i = z_i / ||z_i||, tangent to the sphere at u_i, and its
    expectation over xi is zero, so gradient descent moves each normalised embedding by a random step on the
    sphere (a diffusion). ``z`` [N, D]: online projections. ``generator`` (on z's device) draws xi; by default
    the global RNG, which the trainer reseeds every step so that a resumed run draws the same xi. ``xi``
    [N, D]: the Gaussian draws to use instead (normalised here), e.g. drawn per sample of the global batch.
    """
    if z.dim() != 2:
        raise ValueError(f"brownian_loss expects a batch [N, D], got {tuple(z.shape)}")
    if xi is None:
        xi = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
    elif xi.shape != z.shape:
        raise ValueError(f"brownian_loss expects xi of z's shape {tuple(z.shape)}, got {tuple(xi.shape)}")
    xi = F.normalize(xi, dim=-1).to(device=z.device, dtype=z.dtype)
    return (F.normalize(z, dim=-1) * xi).sum(dim=-1).mean()


def alignment_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs (Wang & Isola 2020, eq. 4): L_align = mean_i ||u_i - v_i||_2^alpha.

    ``x``, ``y`` [N, D]: embeddings of two views of the same images, L2-normalised here (u, v). Supplementary
    Table 3 reports it with alpha = 2, the mean squared distance between positive pairs.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"alignment_loss expects x and y of the same shape [N, D], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return (F.normalize(x, dim=-1) - F.normalize(y, dim=-1)).norm(dim=-1).pow(alpha).mean()


def uniformity_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola 2020, eq. 5): L_uniform = log mean_{i<j} exp(-t ||u_i - u_j||_2^2).

    ``x`` [N, D], L2-normalised here (u): the log of the average pairwise Gaussian potential. Used as an
    evaluation figure (supplementary Table 3) and as the extra loss of the "BYOL + L_uniform" baseline.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"uniformity_loss expects a batch [N, D] with N >= 2, got {tuple(x.shape)}")
    squared_distances = torch.pdist(F.normalize(x.float(), dim=-1)).pow(2)
    # logsumexp - log(count) is the log of the mean without underflow for well-spread batches.
    return torch.logsumexp(-t * squared_distances, dim=0) - torch.log(torch.tensor(float(squared_distances.numel())))
