"""MSBReg / BYOL losses against their formulas, hand-checked values and autograd."""

import math

import pytest
import torch
import torch.nn.functional as F

from msbreg.losses import (
    alignment_loss,
    brownian_loss,
    byol_loss,
    multiview_centroid_loss,
    singular_value_loss,
    uniformity_loss,
)


def test_byol_loss_hand_checked():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    # cos = 1/sqrt(2) and -1: losses 2 - sqrt(2) and 4.
    expected = ((2 - math.sqrt(2)) + 4) / 2
    assert byol_loss(p, z).item() == pytest.approx(expected, abs=1e-6)


def test_byol_loss_stops_gradient_into_target():
    p = torch.randn(5, 3, requires_grad=True)
    z = torch.randn(5, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_multiview_centroid_with_two_views_is_symmetrised_byol():
    torch.manual_seed(0)
    p = torch.randn(2, 6, 4, requires_grad=True)
    z = torch.randn(2, 6, 4) * torch.rand(2, 6, 1) * 3  # varied norms: must not matter for K = 2
    mc = multiview_centroid_loss(p, z)
    (grad_mc,) = torch.autograd.grad(mc, p)
    byol = 0.5 * (byol_loss(p[0], z[1]) + byol_loss(p[1], z[0]))
    (grad_byol,) = torch.autograd.grad(byol, p)
    assert mc.item() == pytest.approx(byol.item(), abs=1e-6)
    torch.testing.assert_close(grad_mc, grad_byol)


def test_multiview_centroid_matches_loop_over_views():
    torch.manual_seed(1)
    num_views, n, d = 4, 5, 3
    p = torch.randn(num_views, n, d)
    z = torch.randn(num_views, n, d)
    total = 0.0
    for k in range(num_views):
        others = [F.normalize(z[j], dim=-1) for j in range(num_views) if j != k]
        centroid = torch.stack(others).mean(0)
        for i in range(n):
            cos = torch.dot(p[k, i], centroid[i]) / (p[k, i].norm() * centroid[i].norm())
            total += 2 - 2 * cos.item()
    assert multiview_centroid_loss(p, z).item() == pytest.approx(total / (num_views * n), abs=1e-5)


def test_multiview_centroid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 views"):
        multiview_centroid_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match=r"\[K, N, D\]"):
        multiview_centroid_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 5))


def _eigenvalue_form(z: torch.Tensor) -> float:
    centred = z.double() - z.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / (z.shape[0] - 1))
    return ((eigenvalues / eigenvalues.mean() - 1) ** 2).mean().item()


def test_singular_value_loss_is_zero_for_whitened_batch():
    torch.manual_seed(2)
    z = torch.randn(64, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    centred = z - z.mean(0)
    covariance = centred.T @ centred / 63
    whitened = centred @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T
    assert singular_value_loss(whitened).item() == pytest.approx(0.0, abs=1e-10)
    assert singular_value_loss(whitened * 5.0 + 3.0).item() == pytest.approx(0.0, abs=1e-10)
    assert singular_value_loss(z).item() > 0.1


@pytest.mark.parametrize("n, d", [(64, 8), (6, 16)])  # both Gram-matrix branches (d <= N and d > N)
def test_singular_value_loss_equals_eigenvalue_form(n, d):
    torch.manual_seed(3)
    z = torch.randn(n, d) * torch.linspace(0.1, 3.0, d)
    assert singular_value_loss(z).item() == pytest.approx(_eigenvalue_form(z), rel=1e-4)


def test_singular_value_loss_is_scale_invariant_and_positive():
    torch.manual_seed(4)
    z = torch.randn(32, 10) * torch.linspace(0.5, 2.0, 10)
    value = singular_value_loss(z).item()
    assert value > 0
    for scale in (1e-3, 7.3, 1e3):
        assert singular_value_loss(z * scale).item() == pytest.approx(value, rel=1e-5)
    # Rank one batch: one eigenvalue carries everything, L_s = d - 1.
    rank_one = torch.randn(32, 1) * torch.randn(1, 10)
    assert singular_value_loss(rank_one).item() == pytest.approx(9.0, rel=1e-5)


def test_singular_value_loss_gradient_matches_finite_differences():
    torch.manual_seed(5)
    z = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(singular_value_loss, (z,))


def test_brownian_loss_equals_formula_with_same_draws():
    z = torch.randn(9, 5)
    loss = brownian_loss(z, generator=torch.Generator().manual_seed(11))
    xi = F.normalize(torch.randn(9, 5, generator=torch.Generator().manual_seed(11)), dim=-1)
    expected = (F.normalize(z, dim=-1) * xi).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # xi is a fresh draw per call, and it lies on the unit sphere.
    generator = torch.Generator().manual_seed(0)
    assert brownian_loss(z, generator=generator).item() != brownian_loss(z, generator=generator).item()
    assert xi.norm(dim=-1).allclose(torch.ones(9))


def test_brownian_gradient_is_tangent_and_matches_formula():
    torch.manual_seed(6)
    z = (torch.randn(8, 6) * 3).requires_grad_()
    seed = 21
    (grad,) = torch.autograd.grad(brownian_loss(z, generator=torch.Generator().manual_seed(seed)), z)
    # Per-sample gradient is orthogonal to z_i, i.e. tangent to the sphere at z_i / ||z_i||.
    assert (grad * z).sum(-1).abs().max().item() < 1e-6
    xi = F.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(seed)), dim=-1)
    u = F.normalize(z.detach(), dim=-1)
    expected = (xi - (xi * u).sum(-1, keepdim=True) * u) / (8 * z.detach().norm(dim=-1, keepdim=True))
    torch.testing.assert_close(grad, expected)


def test_brownian_expected_gradient_is_zero():
    torch.manual_seed(7)
    z = torch.randn(4, 5, requires_grad=True)
    generator = torch.Generator().manual_seed(3)
    draws = 4000
    grads = []
    for _ in range(draws):
        (grad,) = torch.autograd.grad(brownian_loss(z, generator=generator), z)
        grads.append(grad)
    grads = torch.stack(grads)
    single = grads.norm(dim=(1, 2)).mean()
    mean_norm = grads.mean(0).norm()
    # The Monte Carlo mean shrinks like 1/sqrt(draws): here to about 1.6 % of a single draw's norm.
    assert mean_norm < 4 * single / math.sqrt(draws)


def test_alignment_and_uniformity_hand_checked():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # Normalised pairs: orthogonal (squared distance 2) and identical (0).
    assert alignment_loss(x, y).item() == pytest.approx(1.0, abs=1e-6)
    antipodal = torch.tensor([[1.0, 0.0], [-5.0, 0.0]])
    assert uniformity_loss(antipodal).item() == pytest.approx(-8.0, abs=1e-5)  # log exp(-2 * 4)


def test_uniformity_matches_pairwise_formula():
    torch.manual_seed(8)
    x = torch.randn(7, 3)
    u = F.normalize(x, dim=-1)
    potentials = [math.exp(-2 * (u[i] - u[j]).pow(2).sum().item()) for i in range(7) for j in range(i + 1, 7)]
    expected = math.log(sum(potentials) / len(potentials))
    assert uniformity_loss(x).item() == pytest.approx(expected, abs=1e-5)
