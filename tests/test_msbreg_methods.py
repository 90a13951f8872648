"""BYOL and MSBReg methods: K = 2 equivalence, the wiring of the loss terms, the EMA target and its schedule."""

import pytest
import torch
from torch import nn

from common.config import load_config
from common.errors import ConfigError
from common.schedules import ema_momentum
from msbreg.byol import BYOL, BYOLConfig
from msbreg.ema import ema_update, frozen_copy
from msbreg.losses import (
    brownian_loss,
    centroid_to_centroid_loss,
    multiview_centroid_loss,
    singular_value_loss,
    uniformity_loss,
)
from msbreg.msbreg import MSBReg, MSBRegConfig, brownian_noise
from msbreg.train import MSBRegTrainConfig

HEADS = {"projector": [16, 8], "predictor": [16, 8]}


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def views(k: int, n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=generator) for _ in range(k)]


def gradients(method: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in method.named_parameters() if p.requires_grad}


def test_msbreg_with_two_views_and_no_regularisers_reproduces_byol_loss_and_gradients():
    torch.manual_seed(0)
    byol = BYOL(tiny_backbone(), 6, BYOLConfig(**HEADS)).double()
    msbreg = MSBReg(tiny_backbone(), 6, MSBRegConfig(**HEADS, lambda_s=0.0, lambda_b=0.0)).double()
    msbreg.load_state_dict(byol.state_dict())
    # Make the target differ from the online network so that the test is not trivially symmetric.
    for method in (byol, msbreg):
        with torch.no_grad():
            for p in method.target_projector.parameters():
                p.add_(0.1)
    x = [v.double() for v in views(2)]
    out_byol, out_msbreg = byol(x, None), msbreg(x, None)
    out_byol["loss"].backward()
    out_msbreg["loss"].backward()
    # float64: the two losses differ only in the order of float64 operations on O(1) numbers (1e-16 each).
    assert out_msbreg["loss"].item() == pytest.approx(out_byol["loss"].item(), abs=1e-12)
    grads_byol, grads_msbreg = gradients(byol), gradients(msbreg)
    assert grads_byol.keys() == grads_msbreg.keys()
    for name in grads_byol:
        torch.testing.assert_close(grads_msbreg[name], grads_byol[name], rtol=1e-10, atol=1e-12, msg=name)
    assert not any(name.startswith("target_") for name in grads_byol)


@pytest.mark.parametrize("readings", [
    {},
    {"centroid_loss": "centroid_to_centroid", "singular_value_centred": True, "singular_value_normalised": False,
     "brownian_direction": "per_image", "brownian_noise": "gaussian", "brownian_reduction": "sum"},
    {"singular_value_centred": False, "singular_value_normalised": False, "brownian_direction": "per_batch"},
], ids=["defaults", "other_readings", "uncentred_raw_per_batch"])
def test_msbreg_loss_is_the_weighted_sum_of_its_terms(readings):
    torch.manual_seed(1)
    cfg = MSBRegConfig(**HEADS, lambda_s=0.01, lambda_b=0.5, lambda_u=0.3, **readings)
    method = MSBReg(tiny_backbone(), 6, cfg).double()
    x = [v.double() for v in views(4)]
    torch.manual_seed(123)
    out = method(x, None)
    # same weights, same inputs: same embeddings (BN in training mode, per view); [N, K, D] -> [K, N, D]
    embedded = {k: v.transpose(0, 1) for k, v in method.embed(x).items() if k != "features"}
    z = embedded["projections"]
    torch.manual_seed(123)
    xi = brownian_noise(4, 6, 8, cfg.brownian_direction, cfg.brownian_noise)
    expected_b = brownian_loss(z.flatten(0, 1), xi) * (4 * 6 if cfg.brownian_reduction == "sum" else 1)
    centroid = centroid_to_centroid_loss if cfg.centroid_loss == "centroid_to_centroid" else multiview_centroid_loss
    expected_mc = centroid(embedded["predictions"], embedded["targets"])
    expected_s = torch.stack([singular_value_loss(v, cfg.singular_value_centred, cfg.singular_value_normalised)
                              for v in z]).mean()
    expected_u = torch.stack([uniformity_loss(v) for v in z]).mean()
    # float64 model: the method and the reference do the same operations on the same numbers, so the terms
    # agree to float64 rounding (see test_msbreg_losses); uniformity is computed in float32 in both, in the
    # same order, so it agrees exactly too.
    exact = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(out["loss_mc"], expected_mc.detach(), **exact)
    torch.testing.assert_close(out["loss_s"], expected_s.detach(), **exact)
    torch.testing.assert_close(out["loss_b"], expected_b.detach(), **exact)
    torch.testing.assert_close(out["loss_uniform"], expected_u.detach(), rtol=0, atol=0)
    expected = expected_mc + 0.01 * expected_s + 0.5 * expected_b + 0.3 * expected_u
    # The total adds the float32 uniformity term to float64 terms: float32 rounding of an O(1) value, 1e-7.
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert out["features"].shape == (6, 6) and not out["features"].requires_grad


@pytest.mark.parametrize("key, value", [("centroid_loss", "centroid"), ("brownian_direction", "per_view"),
                                        ("brownian_noise", "uniform"), ("brownian_reduction", "max"),
                                        ("head_norm", "gn"), ("lambda_b", "-0.5"), ("base_momentum", "1.5")])
def test_msbreg_rejects_unknown_readings_and_values_out_of_range(key, value):
    with pytest.raises(ConfigError, match=f"'method.{key}'"):
        load_config(MSBRegTrainConfig, [f"method.{key}={value}"])


def test_collapse_monitor_is_zero_for_collapsed_and_near_one_over_sqrt_d_for_spread_projections():
    method = BYOL(tiny_backbone(), 6, BYOLConfig(**HEADS))
    collapsed = torch.ones(2, 50, 8) * torch.rand(1, 1, 8)
    # Equal rows normalise to equal rows; their float32 mean differs from them by a few ulps of O(1) (1e-7).
    assert method.collapse_monitor(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    # Uniform on S^7: each coordinate has mean 0 and variance exactly 1/8. Over n = 8000 rows the sample
    # variance of u_j has a relative standard error sd(u_j^2) / (E[u_j^2] sqrt(n)) = 0.148 / (0.125 x 89)
    # = 1.3 %, half that for the std (0.7 %) and less again for the mean over 8 dimensions (0.3 %): rel 1 % is
    # more than 3 standard errors.
    spread = torch.randn(2, 4000, 8, generator=torch.Generator().manual_seed(0))
    assert method.collapse_monitor(spread).item() == pytest.approx(8 ** -0.5, rel=0.01)


def test_view_count_is_checked():
    with pytest.raises(ValueError, match="exactly 2 views"):
        BYOL(tiny_backbone(), 6, BYOLConfig(**HEADS))(views(3), None)
    with pytest.raises(ValueError, match="at least 2 views"):
        MSBReg(tiny_backbone(), 6, MSBRegConfig(**HEADS))(views(1), None)


def test_ema_update_formula_and_end_points():
    torch.manual_seed(2)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # move the running statistics away from their initial values
    target = frozen_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    # lerp computes b + 0.1 (o - b), the reference 0.9 b + 0.1 o: both a few float32 roundings of numbers below
    # 3 in magnitude (half an ulp, 1.2e-7, each), so they agree to 1e-6.
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)
    for t, o in zip(target.buffers(), online.buffers()):
        torch.testing.assert_close(t, o, rtol=0, atol=0)  # copied
    unchanged = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)  # lerp with weight 0 returns the start exactly, with weight 1 the end
    for t, u in zip(target.parameters(), unchanged):
        torch.testing.assert_close(t, u, rtol=0, atol=0)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(t, o, rtol=0, atol=0)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, 1.5)


def test_ema_momentum_schedule_end_points():
    # Python floats (float64) through one cosine: exact to about 1e-16.
    assert ema_momentum(0, 1000, 0.99) == pytest.approx(0.99, abs=1e-12)
    assert ema_momentum(0, 1000, 0.996) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(500, 1000, 0.99) == pytest.approx(0.995, abs=1e-12)
    assert ema_momentum(1000, 1000, 0.99) == pytest.approx(1.0, abs=1e-12)
    values = [ema_momentum(s, 1000, 0.99) for s in range(0, 1001, 50)]
    assert values == sorted(values)


def test_step_hooks_move_target_by_scheduled_momentum():
    torch.manual_seed(3)
    method = BYOL(tiny_backbone(), 6, BYOLConfig(**HEADS, base_momentum=0.9))
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(0.5)
    before = [p.clone() for p in method.target_projector.parameters()]
    method.on_step_start(0, 10)
    assert method.momentum == pytest.approx(0.9, abs=1e-12)
    method.on_step_end(0, 10)
    for t, b, o in zip(method.target_projector.parameters(), before, method.projector.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)  # as in test_ema_update_formula
    method.on_step_start(10, 10)
    assert method.momentum == pytest.approx(1.0, abs=1e-12)
