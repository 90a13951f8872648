import pytest
import torch
from torch import nn

from common.optim import LARS, OptimConfig, build_optimizer, param_groups, scaled_lr

F64 = torch.float64
EXACT = {"rtol": 1e-14, "atol": 0.0}  # float64: the same few operations in another order, a few units of 2^-53


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=F64).reshape(1, 2))   # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0], dtype=F64))
    w.grad = torch.tensor([[0.6, 0.8]], dtype=F64)                         # ||g|| = 1
    b.grad = torch.tensor([0.5], dtype=F64)
    lr, wd, eta, m = 0.1, 0.01, 0.001, 0.9
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": wd},
                {"params": [b], "lars_exclude": True, "weight_decay": 0.0}], lr=lr, momentum=m, eta=eta)
    opt.step()
    g = torch.tensor([[0.6, 0.8]], dtype=F64) + wd * torch.tensor([[3.0, 4.0]], dtype=F64)  # g + wd w
    trust = eta * 5.0 / float(g.norm())                               # 0.005 / 1.05
    expected_w = torch.tensor([[3.0, 4.0]], dtype=F64) - lr * trust * g
    torch.testing.assert_close(w.detach(), expected_w, **EXACT)
    # excluded: plain momentum SGD, no decay
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - lr * 0.5], dtype=F64), **EXACT)
    # second step uses the momentum buffer: v <- m v + lr * trust * g
    w.grad = torch.tensor([[0.6, 0.8]], dtype=F64)
    b.grad = torch.tensor([0.5], dtype=F64)
    w_before = w.detach().clone()
    opt.step()
    g2 = torch.tensor([[0.6, 0.8]], dtype=F64) + wd * w_before
    trust2 = eta * float(w_before.norm()) / float(g2.norm())
    v2 = m * lr * trust * g + lr * trust2 * g2
    torch.testing.assert_close(w.detach(), w_before - v2, **EXACT)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - lr * 0.5 - (m * lr * 0.5 + lr * 0.5)], dtype=F64),
                               **EXACT)


def test_lars_trust_is_one_when_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([{"params": [w], "lars_exclude": False, "weight_decay": 0.0}], lr=0.5, momentum=0.0).step()
    assert torch.equal(w.detach(), -0.5 * torch.ones(2, 2))  # 0 - 0.5 x 1: exact in float32


def test_param_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    regular, excluded = param_groups(model, base_lr=0.2, weight_decay=1e-4)
    assert {p.ndim for p in regular["params"]} == {2} and len(regular["params"]) == 2
    assert len(excluded["params"]) == 4 and excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    assert len(param_groups(model, 0.2, 1e-4, exclude_bias_and_norm=False)) == 1


@pytest.mark.parametrize("name, cls", [("lars", LARS), ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_factory(name, cls):
    model = nn.Linear(3, 2)
    opt = build_optimizer(OptimConfig(name=name), param_groups(model, 0.1, 0.0))
    assert isinstance(opt, cls)


def test_factory_rejects_unknown_and_scales_lr():
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(OptimConfig(name="rmsprop"), param_groups(nn.Linear(2, 2), 0.1, 0.0))
    assert scaled_lr(OptimConfig(lr=0.3), 4096) == pytest.approx(4.8)
    assert scaled_lr(OptimConfig(lr=0.4, lr_scaling="linear_views"), 512, num_views=4) == pytest.approx(3.2)
