"""MSBReg / BYOL losses against their formulas, hand-checked values and autograd.

Tolerances: the checks run in float64 wherever the loss allows it. A float64 result of a few hundred
operations on O(1) numbers is exact to about 1e-16 x (number of operations) < 1e-13, so values are compared
with an absolute (or relative) 1e-12 and gradients with ``assert_close(..., rtol=1e-10, atol=1e-12)``; a value
that is exact in binary (0.5, 9.0) is compared with ==. The few float32 checks say their argument beside them.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from common import distributed
from msbreg.losses import (
    alignment_loss,
    brownian_loss,
    byol_loss,
    centroid_to_centroid_loss,
    multiview_centroid_loss,
    singular_value_loss,
    uniformity_loss,
)
from msbreg.msbreg import brownian_noise

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-12}  # float64: see the module docstring


def test_byol_loss_hand_checked():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    z = torch.tensor([[1.0, 1.0], [0.0, -2.0]], dtype=F64)
    # cos = 1/sqrt(2) and -1: losses 2 - sqrt(2) and 4.
    expected = ((2 - math.sqrt(2)) + 4) / 2
    assert byol_loss(p, z).item() == pytest.approx(expected, abs=1e-12)


def test_byol_loss_stops_gradient_into_target():
    p = torch.randn(5, 3, requires_grad=True)
    z = torch.randn(5, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


# ---------------------------------------------------------------------------------------------------------
# Multiview centroid loss, both readings


def test_multiview_centroid_with_two_views_is_symmetrised_byol():
    torch.manual_seed(0)
    p = torch.randn(2, 6, 4, dtype=F64, requires_grad=True)
    z = torch.randn(2, 6, 4, dtype=F64) * torch.rand(2, 6, 1, dtype=F64) * 3  # varied norms: must not matter
    mc = multiview_centroid_loss(p, z)
    (grad_mc,) = torch.autograd.grad(mc, p)
    byol = 0.5 * (byol_loss(p[0], z[1]) + byol_loss(p[1], z[0]))
    (grad_byol,) = torch.autograd.grad(byol, p)
    assert mc.item() == pytest.approx(byol.item(), abs=1e-12)
    torch.testing.assert_close(grad_mc, grad_byol, **EXACT)


def test_multiview_centroid_matches_loop_over_views():
    torch.manual_seed(1)
    num_views, n, d = 4, 5, 3
    p = torch.randn(num_views, n, d, dtype=F64)
    z = torch.randn(num_views, n, d, dtype=F64)
    total = 0.0
    for k in range(num_views):
        others = [F.normalize(z[j], dim=-1) for j in range(num_views) if j != k]
        centroid = torch.stack(others).mean(0)
        for i in range(n):
            cos = torch.dot(p[k, i], centroid[i]) / (p[k, i].norm() * centroid[i].norm())
            total += 2 - 2 * cos.item()
    assert multiview_centroid_loss(p, z).item() == pytest.approx(total / (num_views * n), abs=1e-12)


def test_centroid_to_centroid_hand_checked():
    # One image, K = 2. Online: (1, 0) and (0, 2) -> unit vectors (1, 0), (0, 1), centroid (1/2, 1/2).
    # Target: (3, 0) twice -> centroid (1, 0). Squared distance: 1/4 + 1/4 = 1/2 (exact in binary).
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]], dtype=F64)
    z = torch.tensor([[[3.0, 0.0]], [[3.0, 0.0]]], dtype=F64)
    assert centroid_to_centroid_loss(p, z).item() == 0.5
    # Same directions in both networks: zero, whatever the norms.
    assert centroid_to_centroid_loss(p, 5 * p).item() == 0.0


def test_centroid_to_centroid_matches_loop_and_stops_gradient_into_target():
    torch.manual_seed(2)
    num_views, n, d = 3, 4, 5
    p = torch.randn(num_views, n, d, dtype=F64, requires_grad=True)
    z = torch.randn(num_views, n, d, dtype=F64, requires_grad=True)
    total = 0.0
    for i in range(n):
        online = sum(p[k, i] / p[k, i].norm() for k in range(num_views)) / num_views
        target = sum(z[k, i] / z[k, i].norm() for k in range(num_views)) / num_views
        total += ((online - target) ** 2).sum().item()
    loss = centroid_to_centroid_loss(p, z)
    assert loss.item() == pytest.approx(total / n, abs=1e-12)
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0


def test_centroid_to_centroid_gradient_is_the_formula():
    # d/dp_ki of (1/N) ||c_i - t_i||^2 with c_i = mean_k u_ki, u = p / ||p||:
    # (2 / (N K ||p_ki||)) (I - u_ki u_ki^T) (c_i - t_i).
    torch.manual_seed(3)
    num_views, n, d = 4, 3, 6
    p = torch.randn(num_views, n, d, dtype=F64, requires_grad=True)
    z = torch.randn(num_views, n, d, dtype=F64)
    (grad,) = torch.autograd.grad(centroid_to_centroid_loss(p, z), p)
    u = F.normalize(p.detach(), dim=-1)
    residual = u.mean(0) - F.normalize(z, dim=-1).mean(0)  # [N, D]
    tangent = residual - (u * residual).sum(-1, keepdim=True) * u
    expected = 2 * tangent / (n * num_views * p.detach().norm(dim=-1, keepdim=True))
    torch.testing.assert_close(grad, expected, **EXACT)


@pytest.mark.parametrize("loss", [multiview_centroid_loss, centroid_to_centroid_loss])
def test_centroid_losses_reject_bad_shapes(loss):
    with pytest.raises(ValueError, match="at least 2 views"):
        loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match=r"\[K, N, D\]"):
        loss(torch.randn(2, 4, 3), torch.randn(2, 4, 5))


# ---------------------------------------------------------------------------------------------------------
# Singular value loss, its four readings

READINGS = [(True, False), (True, True), (False, False), (False, True)]  # (centred, normalised)


def _prepared(z: torch.Tensor, centred: bool, normalised: bool) -> torch.Tensor:
    z = F.normalize(z, dim=-1) if normalised else z
    return z - z.mean(0) if centred else z


def _singular_value_form(z: torch.Tensor, centred: bool, normalised: bool) -> torch.Tensor:
    """The docstring's definition: (1/d) sum_i (s_i^2 / mean(s^2) - 1)^2 over d singular values (padded)."""
    matrix = _prepared(z, centred, normalised)
    dim = matrix.shape[1]
    squared = torch.linalg.svdvals(matrix) ** 2
    squared = torch.cat([squared, squared.new_zeros(dim - squared.numel())])
    return ((squared / squared.mean() - 1) ** 2).mean()


def test_singular_value_loss_hand_checked():
    # Rows (1, 0), (0, 2), (0, -2). Uncentred raw: Z^T Z = diag(1, 8), ||Z||_F^2 = 9, L_s = 2 * 65 / 81 - 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=F64)
    assert singular_value_loss(z, centred=False, normalised=False).item() == pytest.approx(49 / 81, abs=1e-12)
    # Uncentred normalised: rows (1, 0), (0, 1), (0, -1): Z^T Z = diag(1, 2), L_s = 2 * 5 / 9 - 1.
    assert singular_value_loss(z, centred=False, normalised=True).item() == pytest.approx(1 / 9, abs=1e-12)
    # Centred raw: the mean (1/3, 0) leaves column 1 = (2/3, -1/3, -1/3) (sum of squares 2/3) and column 2 =
    # (0, 2, -2) (8), orthogonal: eigenvalues 2/3 and 8, L_s = 2 (4/9 + 64) / (26/3)^2 - 1 = 484 / 676.
    expected = 2 * ((2 / 3) ** 2 + 8 ** 2) / (2 / 3 + 8) ** 2 - 1
    assert singular_value_loss(z, centred=True, normalised=False).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("centred, normalised", READINGS)
@pytest.mark.parametrize("n, d", [(64, 8), (6, 16)])  # both Gram-matrix branches (d <= N and d > N)
def test_singular_value_loss_equals_singular_value_form_with_its_gradient(n, d, centred, normalised):
    torch.manual_seed(4)
    z = (torch.randn(n, d, dtype=F64) * torch.linspace(0.1, 3.0, d, dtype=F64) + 0.5).requires_grad_()
    loss = singular_value_loss(z, centred, normalised)
    reference = _singular_value_form(z, centred, normalised)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    # The Gram-matrix form against autograd through the SVD (distinct singular values: differentiable).
    (grad,) = torch.autograd.grad(loss, z)
    (grad_reference,) = torch.autograd.grad(reference, z)
    torch.testing.assert_close(grad, grad_reference, **EXACT)


@pytest.mark.parametrize("centred, normalised", READINGS)
def test_singular_value_loss_is_zero_for_a_white_batch_and_scale_invariant(centred, normalised):
    # Rows +-e_1, ..., +-e_4: unit norm, zero mean, Z^T Z = 2 I, so every reading gives exactly 0.
    eye = torch.eye(4, dtype=F64)
    white = torch.cat([eye, -eye])
    assert singular_value_loss(white, centred, normalised).item() == pytest.approx(0.0, abs=1e-12)
    torch.manual_seed(5)
    z = torch.randn(32, 10, dtype=F64) * torch.linspace(0.5, 2.0, 10, dtype=F64)
    value = singular_value_loss(z, centred, normalised).item()
    assert value > 0
    for scale in (1e-3, 7.3, 1e3):
        assert singular_value_loss(z * scale, centred, normalised).item() == pytest.approx(value, abs=1e-12)


def test_only_the_uncentred_readings_see_a_collapse():
    # A collapsed batch: every row the same point plus a tiny white residual. Uncentred, Z is nearly rank one
    # and L_s is near its maximum d - 1. Centred, only the residual is left: white in R^d for raw rows (L_s
    # near 0), white in the (d - 1)-dimensional tangent plane for normalised rows (L_s near d/(d-1) - 1 = 1/7);
    # both far below d - 1 = 7. The residual's size 1e-4 makes the deviations from these limits O(1e-4).
    torch.manual_seed(6)
    d = 8
    point = torch.randn(1, d, dtype=F64)
    residual = torch.linalg.qr(torch.randn(256, d, dtype=F64))[0] * 1e-4  # orthonormal columns: white
    residual = residual - residual.mean(0)
    collapsed = point + residual
    for normalised in (False, True):
        assert singular_value_loss(collapsed, centred=False, normalised=normalised).item() > d - 1 - 1e-3
    assert singular_value_loss(collapsed, centred=True, normalised=False).item() < 1e-3
    assert singular_value_loss(collapsed, centred=True, normalised=True).item() == pytest.approx(1 / 7, abs=1e-3)
    rank_one = torch.randn(32, 1, dtype=F64) * torch.randn(1, d, dtype=F64)  # d - 1 exactly, any reading raw
    assert singular_value_loss(rank_one, centred=False, normalised=False).item() == pytest.approx(d - 1, abs=1e-12)


def test_singular_value_loss_normalised_ignores_row_norms():
    torch.manual_seed(7)
    z = torch.randn(20, 6, dtype=F64)
    rescaled = z * torch.rand(20, 1, dtype=F64).add(0.1) * 10
    for centred in (False, True):
        assert singular_value_loss(rescaled, centred, True).item() == pytest.approx(
            singular_value_loss(z, centred, True).item(), abs=1e-12)
    assert singular_value_loss(rescaled, False, False).item() != pytest.approx(
        singular_value_loss(z, False, False).item(), abs=1e-3)


# ---------------------------------------------------------------------------------------------------------
# Brownian loss and its noise


def test_brownian_loss_equals_formula():
    torch.manual_seed(8)
    z = torch.randn(9, 5, dtype=F64)
    xi = torch.randn(9, 5, dtype=F64)
    expected = sum((z[i] / z[i].norm() * xi[i]).sum().item() for i in range(9)) / 9
    assert brownian_loss(z, xi).item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="xi"):
        brownian_loss(z, xi[:3])


def test_brownian_gradient_is_tangent_and_matches_formula():
    torch.manual_seed(9)
    z = (torch.randn(8, 6, dtype=F64) * 3).requires_grad_()
    xi = torch.randn(8, 6, dtype=F64)
    (grad,) = torch.autograd.grad(brownian_loss(z, xi), z)
    u = F.normalize(z.detach(), dim=-1)
    expected = (xi - (xi * u).sum(-1, keepdim=True) * u) / (8 * z.detach().norm(dim=-1, keepdim=True))
    torch.testing.assert_close(grad, expected, **EXACT)
    # Tangent to the sphere at u_i: <grad_i, z_i> = 0 up to float64 rounding of O(1) products.
    assert (grad * z.detach()).sum(-1).abs().max().item() < 1e-12
    # Linear in xi: opposite draws give opposite gradients, so a symmetric xi gives a zero-mean force.
    (grad_opposite,) = torch.autograd.grad(brownian_loss(z, -xi), z)
    torch.testing.assert_close(grad_opposite, -grad, **EXACT)


def test_brownian_noise_directions_and_scales():
    k, n, d = 3, 5, 4
    torch.manual_seed(10)
    per_sample = brownian_noise(k, n, d, "per_sample", "gaussian")
    torch.manual_seed(10)
    assert torch.equal(per_sample, torch.randn(k, n, d).reshape(k * n, d))  # one N(0, I) draw per row
    torch.manual_seed(10)
    per_image = brownian_noise(k, n, d, "per_image", "gaussian").reshape(k, n, d)
    torch.manual_seed(10)
    draw = torch.randn(n, d)
    assert all(torch.equal(view, draw) for view in per_image)  # the same draw for every view
    torch.manual_seed(10)
    per_batch = brownian_noise(k, n, d, "per_batch", "gaussian")
    torch.manual_seed(10)
    assert torch.equal(per_batch, torch.randn(1, d).expand(k * n, d))  # one draw for the whole step
    torch.manual_seed(10)
    sphere = brownian_noise(k, n, d, "per_sample", "sphere")
    torch.testing.assert_close(sphere, F.normalize(per_sample, dim=-1), rtol=0, atol=0)
    # float32 unit vectors: the norm is 1 to a few float32 ulps (6e-8 each).
    torch.testing.assert_close(sphere.norm(dim=-1), torch.ones(k * n), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="direction"):
        brownian_noise(k, n, d, "per_view", "sphere")
    with pytest.raises(ValueError, match="noise"):
        brownian_noise(k, n, d, "per_sample", "uniform")


@pytest.mark.parametrize("direction", ["per_sample", "per_image", "per_batch"])
def test_brownian_noise_is_the_same_for_any_number_of_processes(direction, monkeypatch):
    # Every rank of W processes draws from an identically seeded global RNG and keeps its rows; the rows of
    # all ranks, view by view, must be the single-process draw for the global batch.
    k, batch, d, world = 2, 6, 3, 3
    torch.manual_seed(11)
    single = brownian_noise(k, batch, d, direction, "sphere").reshape(k, batch, d)
    shards = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        torch.manual_seed(11)
        shards.append(brownian_noise(k, batch // world, d, direction, "sphere").reshape(k, batch // world, d))
    assert torch.equal(torch.cat(shards, dim=1), single)


def test_brownian_noise_on_the_sphere_has_zero_mean():
    # Each coordinate of a uniform unit vector in R^d has mean 0 and variance 1/d; the mean of M = 40,000
    # draws has standard deviation 1/sqrt(d M) = 0.0018 for d = 8, and the bound is 5 of them.
    torch.manual_seed(12)
    draws = brownian_noise(4, 10_000, 8, "per_sample", "sphere")
    assert draws.mean(0).abs().max().item() < 5 / math.sqrt(8 * 40_000)


# ---------------------------------------------------------------------------------------------------------
# Wang & Isola's alignment and uniformity (supplementary Table 3)


def test_alignment_and_uniformity_hand_checked():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=F64)
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    # Normalised pairs: orthogonal (squared distance 2) and identical (0).
    assert alignment_loss(x, y).item() == pytest.approx(1.0, abs=1e-12)
    antipodal = torch.tensor([[1.0, 0.0], [-5.0, 0.0]], dtype=F64)
    # log exp(-2 * 4); uniformity_loss computes in float32 (x.float()): -8 to a few float32 ulps of 8 (1e-6).
    assert uniformity_loss(antipodal).item() == pytest.approx(-8.0, abs=1e-5)


def test_uniformity_matches_pairwise_formula():
    torch.manual_seed(13)
    x = torch.randn(7, 3)
    u = F.normalize(x.double(), dim=-1)
    potentials = [math.exp(-2 * (u[i] - u[j]).pow(2).sum().item()) for i in range(7) for j in range(i + 1, 7)]
    expected = math.log(sum(potentials) / len(potentials))
    # float32 (the loss casts to float32): 21 pairs of O(1) terms, relative rounding ~1e-7 each, so 1e-5 covers
    # the accumulated error with a wide margin.
    assert uniformity_loss(x).item() == pytest.approx(expected, abs=1e-5)
