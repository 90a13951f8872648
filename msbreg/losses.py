"""Losses of BYOL and MSBReg (Moon et al., "An Embedding-Dynamic Approach to Self-supervised Learning").

Only the paper's supplementary material is available, not the main text with its equations. The formulas
below are this project's readings of the paper's words (the Figure 1 caption and the supplement); where the
words allow more than one formula, each reading is a switch of ``msbreg.msbreg.MSBRegConfig``, and every term
is a separate pure function of tensors.
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
    """Multiview centroid loss of MSBReg, leave-one-out reading: each prediction to the other views' centroid.

    L_mc = mean_k mean_i (2 - 2 cos(p_ki, sg(c_ki))),   c_ki = mean_{j != k} z_ji / ||z_ji||

    Each online prediction p_k of view k is pulled to the centroid of the L2-normalised target projections of
    the other K - 1 views of the same image (the cosine ignores the centroid's norm, so it is the normalised
    centroid). The target projections are normalised before averaging so that every view, a point on the unit
    sphere, weighs the same. With K = 2 the centroid is the other view's projection and L_mc is BYOL's
    symmetrised loss, the mean of ``byol_loss(p1, z2)`` and ``byol_loss(p2, z1)``.

    ``online_predictions`` and ``target_projections``: [K, N, D] with K >= 2 views.
    """
    num_views = _check_views("multiview_centroid_loss", online_predictions, target_projections)
    targets = F.normalize(target_projections.detach(), dim=-1)
    # Leave-one-out centroid of every view in one pass: (sum over all views - own view) / (K - 1).
    centroids = (targets.sum(dim=0, keepdim=True) - targets) / (num_views - 1)
    cosine = F.cosine_similarity(online_predictions, centroids, dim=-1)
    return (2.0 - 2.0 * cosine).mean()


def centroid_to_centroid_loss(online_predictions: Tensor, target_projections: Tensor) -> Tensor:
    """Multiview centroid loss of MSBReg, centroid-to-centroid reading: online centroid to target centroid.

    L_mc = mean_i || mean_k p_ki / ||p_ki||  -  sg(mean_k z_ki / ||z_ki||) ||^2

    The Figure 1 caption's wording ("minimize the distance between centroids of online and target network
    embeddings of different views") read literally: the squared Euclidean distance between the centroid of
    the K L2-normalised online predictions of an image and the centroid of its K L2-normalised target
    projections. For K = 1 it is BYOL's normalised mean squared error 2 - 2 cos(p, z). The distance, not the
    cosine of the centroids, so that the centroids' norms (how much the views agree) count too. Unlike the
    leave-one-out reading, a view's own target projection is part of the centroid it is pulled to, so with
    K = 2 this is not BYOL's loss.

    ``online_predictions`` and ``target_projections``: [K, N, D] with K >= 2 views.
    """
    _check_views("centroid_to_centroid_loss", online_predictions, target_projections)
    online_centroid = F.normalize(online_predictions, dim=-1).mean(dim=0)
    target_centroid = F.normalize(target_projections.detach(), dim=-1).mean(dim=0)
    return (online_centroid - target_centroid).pow(2).sum(dim=-1).mean()


def _check_views(name: str, online_predictions: Tensor, target_projections: Tensor) -> int:
    if online_predictions.shape != target_projections.shape or online_predictions.dim() != 3:
        raise ValueError(f"{name} expects online_predictions and target_projections of the same shape [K, N, D], "
                         f"got {tuple(online_predictions.shape)} and {tuple(target_projections.shape)}")
    num_views = online_predictions.shape[0]
    if num_views < 2:
        raise ValueError(f"{name} needs at least 2 views, got K = {num_views}")
    return num_views


def singular_value_loss(z: Tensor, centred: bool = True, normalised: bool = False, eps: float = 1e-12) -> Tensor:
    """Singular value loss of MSBReg: spread of the squared singular values of the batch (a reading).

    L_s = (1/d) sum_i (s_i^2 / mean(s^2) - 1)^2 = d * ||Z^T Z||_F^2 / ||Z||_F^4 - 1

    where s_1..s_d are the singular values of the batch matrix Z [N, d] (zero-padded to d when N < d), built
    from the projections z [N, d] as the two switches say:
      - ``normalised``: rows L2-normalised first, z_i / ||z_i|| (then ||Z||_F^2 = N);
      - ``centred``: the batch mean subtracted (after the normalisation), so that Z^T Z / (N - 1) is the
        covariance and L_s the spread of its eigenvalues (a whitening loss); uncentred, Z^T Z / N is the
        second-moment matrix.
    The right hand side is what is computed (no SVD): ||Z^T Z||_F = ||Z Z^T||_F, the smaller Gram matrix is
    used. L_s >= 0, and it is 0 exactly when all d squared singular values are equal; it does not change when
    z is scaled. The readings differ on a collapsed batch (every row the same vector): uncentred it is a
    rank-one matrix and L_s takes its maximum d - 1; centred it is only the spread of the residual noise
    around the common point, which can be white at any scale, so the centred loss does not see a collapse.
    ``z`` must be the global batch (gather it across ranks with ``common.distributed.gather_with_grad``
    first). Computed in float32 at least.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"singular_value_loss expects a batch [N, D] with N >= 2, got {tuple(z.shape)}")
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    if normalised:
        z = F.normalize(z, dim=-1, eps=eps)
    if centred:
        z = z - z.mean(dim=0, keepdim=True)
    num_samples, dim = z.shape
    # Scale-free form: with Z / ||Z||_F the trace term is 1. eps only guards a batch of identical rows.
    z = z / z.norm().clamp_min(eps)
    gram = z.T @ z if dim <= num_samples else z @ z.T
    return dim * gram.pow(2).sum() - 1.0


def brownian_loss(z: Tensor, xi: Tensor) -> Tensor:
    """Brownian diffusive loss of MSBReg (this project's reading of the paper).

    L_b = mean_i <z_i / ||z_i||, xi_i>,   xi_i a fresh random draw every step, E[xi_i] = 0

    A random force on every embedding: the gradient with respect to z_i is (I - u_i u_i^T) xi_i / (N ||z_i||)
    with u_i = z_i / ||z_i||, tangent to the sphere at u_i, and its expectation over xi is zero, so gradient
    descent moves each normalised embedding by a random step on the sphere (a diffusion). ``z`` [N, D]: online
    projections; ``xi`` [N, D]: the random directions, drawn by the caller (``msbreg.msbreg.brownian_noise``
    draws them per sample, per image or per batch, on the unit sphere or Gaussian); their norm is the scale of
    the step, so it multiplies the loss's weight (and so does summing over the N rows instead of averaging,
    ``MSBRegConfig.brownian_reduction``).
    """
    if z.dim() != 2:
        raise ValueError(f"brownian_loss expects a batch [N, D], got {tuple(z.shape)}")
    if xi.shape != z.shape:
        raise ValueError(f"brownian_loss expects xi of z's shape {tuple(z.shape)}, got {tuple(xi.shape)}")
    return (F.normalize(z, dim=-1) * xi.to(device=z.device, dtype=z.dtype)).sum(dim=-1).mean()


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
