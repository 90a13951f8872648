"""BYOL and MSBReg methods: K = 2 equivalence, the wiring of the loss terms, the EMA target and its schedule."""

import pytest
import torch
from torch import nn

from common.schedules import ema_momentum
from msbreg.byol import BYOL, BYOLConfig
from msbreg.ema import ema_update, frozen_copy
from msbreg.losses import brownian_loss, multiview_centroid_loss, singular_value_loss, uniformity_loss
from msbreg.msbreg import MSBReg, MSBRegConfig

HEADS = {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16}


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
    byol = BYOL(BYOLConfig(**HEADS), tiny_backbone(), 6)
    msbreg = MSBReg(MSBRegConfig(**HEADS, lambda_s=0.0, lambda_b=0.0), tiny_backbone(), 6)
    msbreg.load_state_dict(byol.state_dict())
    # Make the target differ from the online network so that the test is not trivially symmetric.
    for method in (byol, msbreg):
        with torch.no_grad():
            for p in method.target_projector.parameters():
                p.add_(0.1)
    x = views(2)
    out_byol, out_msbreg = byol(x, None), msbreg(x, None)
    out_byol["loss"].backward()
    out_msbreg["loss"].backward()
    assert out_msbreg["loss"].item() == pytest.approx(out_byol["loss"].item(), abs=1e-6)
    grads_byol, grads_msbreg = gradients(byol), gradients(msbreg)
    assert grads_byol.keys() == grads_msbreg.keys()
    for name in grads_byol:
        torch.testing.assert_close(grads_msbreg[name], grads_byol[name], msg=name)
    assert not any(name.startswith("target_") for name in grads_byol)


def test_msbreg_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(1)
    cfg = MSBRegConfig(**HEADS, lambda_s=0.01, lambda_b=0.5, lambda_u=0.3)
    method = MSBReg(cfg, tiny_backbone(), 6)
    x = views(4)
    torch.manual_seed(123)
    out = method(x, None)
    embedded = method.embed(x)  # same weights, same inputs: same embeddings (BN in training mode, per view)
    z = embedded["projections"]
    torch.manual_seed(123)
    expected_b = brownian_loss(z.flatten(0, 1))
    expected_mc = multiview_centroid_loss(embedded["predictions"], embedded["targets"])
    expected_s = torch.stack([singular_value_loss(v) for v in z]).mean()
    expected_u = torch.stack([uniformity_loss(v) for v in z]).mean()
    torch.testing.assert_close(out["loss_mc"], expected_mc.detach())
    torch.testing.assert_close(out["loss_s"], expected_s.detach())
    torch.testing.assert_close(out["loss_b"], expected_b.detach())
    torch.testing.assert_close(out["loss_uniform"], expected_u.detach())
    expected = expected_mc + 0.01 * expected_s + 0.5 * expected_b + 0.3 * expected_u
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert out["features"].shape == (6, 6) and not out["features"].requires_grad


def test_collapse_monitor_is_zero_for_collapsed_and_near_one_over_sqrt_d_for_spread_projections():
    method = BYOL(BYOLConfig(**HEADS), tiny_backbone(), 6)
    collapsed = torch.ones(2, 50, 8) * torch.rand(1, 1, 8)
    assert method.collapse_monitor(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    spread = torch.randn(2, 4000, 8, generator=torch.Generator().manual_seed(0))
    assert method.collapse_monitor(spread).item() == pytest.approx(8 ** -0.5, rel=0.05)


def test_view_count_is_checked():
    with pytest.raises(ValueError, match="exactly 2 views"):
        BYOL(BYOLConfig(**HEADS), tiny_backbone(), 6)(views(3), None)
    with pytest.raises(ValueError, match="at least 2 views"):
        MSBReg(MSBRegConfig(**HEADS), tiny_backbone(), 6)(views(1), None)


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
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    for t, o in zip(target.buffers(), online.buffers()):
        torch.testing.assert_close(t, o)
    unchanged = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    for t, u in zip(target.parameters(), unchanged):
        torch.testing.assert_close(t, u)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(t, o)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, 1.5)


def test_ema_momentum_schedule_end_points():
    assert ema_momentum(0, 1000, 0.99) == pytest.approx(0.99)
    assert ema_momentum(0, 1000, 0.996) == pytest.approx(0.996)
    assert ema_momentum(500, 1000, 0.99) == pytest.approx(0.995)
    assert ema_momentum(1000, 1000, 0.99) == pytest.approx(1.0)
    values = [ema_momentum(s, 1000, 0.99) for s in range(0, 1001, 50)]
    assert values == sorted(values)


def test_step_hooks_move_target_by_scheduled_momentum():
    torch.manual_seed(3)
    method = BYOL(BYOLConfig(**HEADS, base_momentum=0.9), tiny_backbone(), 6)
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(0.5)
    before = [p.clone() for p in method.target_projector.parameters()]
    method.on_step_start(0, 10)
    assert method.momentum == pytest.approx(0.9)
    method.on_step_end(0, 10)
    for t, b, o in zip(method.target_projector.parameters(), before, method.projector.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    method.on_step_start(10, 10)
    assert method.momentum == pytest.approx(1.0)
