import pytest
import torch
from torch import nn

from common.optim import LARS, OptimConfig, build_optimizer, param_groups, scaled_lr


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]).reshape(1, 2))        # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([[0.6, 0.8]])                              # ||g|| = 1
    b.grad = torch.tensor([0.5])
    lr, wd, eta, m = 0.1, 0.01, 0.001, 0.9
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": wd},
                {"params": [b], "lars_exclude": True, "weight_decay": 0.0}], lr=lr, momentum=m, eta=eta)
    opt.step()
    g = torch.tensor([[0.6, 0.8]]) + wd * torch.tensor([[3.0, 4.0]])  # g + wd w = [0.63, 0.84]
    trust = eta * 5.0 / float(g.norm())                               # 0.005 / 1.05
    expected_w = torch.tensor([[3.0, 4.0]]) - lr * trust * g
    assert torch.allclose(w.detach(), expected_w, atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - lr * 0.5]))  # excluded: plain momentum SGD, no decay
    # second step uses the momentum buffer: v <- m v + lr * trust * g
    w.grad = torch.tensor([[0.6, 0.8]])
    b.grad = torch.tensor([0.5])
    w_before = w.detach().clone()
    opt.step()
    g2 = torch.tensor([[0.6, 0.8]]) + wd * w_before
    trust2 = eta * float(w_before.norm()) / float(g2.norm())
    v2 = m * lr * trust * g + lr * trust2 * g2
    assert torch.allclose(w.detach(), w_before - v2, atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - lr * 0.5 - (m * lr * 0.5 + lr * 0.5)]))


def test_lars_trust_is_one_when_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([{"params": [w], "lars_exclude": False, "weight_decay": 0.0}], lr=0.5, momentum=0.0).step()
    assert torch.allclose(w.detach(), -0.5 * torch.ones(2, 2))


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
