import math

import pytest
import torch
from torch import nn

from stochcon.latents import StochConConfig, sample_gumbel_bernoulli
from stochcon.losses import info_nce, multicrop_info_nce
from stochcon.simclr import SimCLRConfig
from stochcon.stochcon import StochasticBranch, StochCon, SupervisedBernoulli

WIDTH = 16


class TinyBackbone(nn.Module):
    """Pooled features of any image size: mean over space of a 1x1 convolution (no batch-norm, so a view's
    features do not depend on which other views share its forward pass)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, WIDTH, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


SIMCLR = SimCLRConfig(proj_hidden_dim=32, proj_output_dim=8, proj_norm="none")


def make(cfg: StochConConfig, num_global_views: int = 2) -> StochCon:
    torch.manual_seed(0)
    return StochCon(TinyBackbone(), WIDTH, SIMCLR, cfg, num_global_views)


def small_cfg(**overrides) -> StochConConfig:
    return StochConConfig(**overrides)


def views(n_global=2, n_local=0, batch=6):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(n_global)] + [
        torch.randn(batch, 3, 4, 4, generator=gen) for _ in range(n_local)
    ]


def test_full_width_latent_turns_projections_off():
    full = StochasticBranch(WIDTH, "bernoulli", None, "hard", 1.0)
    assert isinstance(full.pi, nn.Identity) and isinstance(full.rho, nn.Identity)
    assert isinstance(StochasticBranch(WIDTH, "bernoulli", WIDTH, "hard", 1.0).pi, nn.Identity)
    narrow = StochasticBranch(WIDTH, "gaussian", 4, "hard", 1.0)
    assert narrow.pi.weight.shape == (4, WIDTH) and narrow.rho.weight.shape == (WIDTH, 4)
    with pytest.raises(ValueError, match="method.latent "):
        StochasticBranch(WIDTH, "beta", 4, "hard", 1.0)


def test_pi_init_gain_scales_the_bottleneck_and_the_logits():
    torch.manual_seed(0)
    default = StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0)
    torch.manual_seed(0)
    scaled = StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0, pi_init_gain=3.0)
    torch.testing.assert_close(scaled.pi.weight, 3.0 * default.pi.weight)
    torch.testing.assert_close(scaled.pi.bias, 3.0 * default.pi.bias)
    torch.testing.assert_close(scaled.rho.weight, default.rho.weight)  # the decoder keeps its initialisation
    h = torch.randn(5, WIDTH)
    torch.testing.assert_close(scaled.pi(h), 3.0 * default.pi(h))
    method_pi = make(small_cfg(latent_dim=4, pi_init_gain=3.0)).branch.pi
    torch.testing.assert_close(method_pi.weight, 3.0 * make(small_cfg(latent_dim=4)).branch.pi.weight)
    with pytest.raises(ValueError, match="pi_init_gain scales the bottleneck pi, which is off"):
        StochasticBranch(WIDTH, "bernoulli", None, "hard", 1.0, pi_init_gain=3.0)
    with pytest.raises(ValueError, match="pi_init_gain must be positive"):
        StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0, pi_init_gain=0.0)


def run_seeded(method: StochCon):
    """The method's output on two views with the global RNG at seed 5, and the two views' features after
    re-seeding, so that a sample drawn next is the method's own noise."""
    x = views()
    torch.manual_seed(5)
    out = method(x, torch.full((6,), -1))
    torch.manual_seed(5)
    return out, method.backbone(x[0]), method.backbone(x[1])


def test_two_view_loss_is_algorithm_1():
    """v = g(h) for view 0, v' = g(rho(hard GB(pi(h')))) for view 1, loss = InfoNCE(v, v')."""
    method = make(small_cfg(latent_dim=4))
    out, h0, h1 = run_seeded(method)
    branch = method.branch
    z = sample_gumbel_bernoulli(branch.pi(h1), 1.0, hard=True)
    expected = info_nce(method.projector(h0), method.projector(branch.rho(z)), 0.1)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["features"], h0.detach())
    assert 0 <= out["active_bits"] <= 4
    assert out["gumbel_temperature"] == 1.0


def test_both_directions_contrasts_each_global_view_through_the_latent_once():
    """both_directions: the mean of InfoNCE(g(h), g(rho(z'))) and InfoNCE(g(rho(z)), g(h')), one latent pass."""
    method = make(small_cfg(latent_dim=4, both_directions=True))
    assert method.contrasted_pairs(2) == [((0, False), (1, True)), ((0, True), (1, False))]
    out, h0, h1 = run_seeded(method)
    branch = method.branch
    z0, z1 = sample_gumbel_bernoulli(branch.pi(torch.cat([h0, h1])), 1.0, hard=True, groups=2).chunk(2)
    g = method.projector
    expected = (info_nce(g(h0), g(branch.rho(z1)), 0.1) + info_nce(g(branch.rho(z0)), g(h1), 0.1)) / 2
    torch.testing.assert_close(out["loss"], expected)
    # With local views the switch changes only the global pair; the paper's pairs are kept.
    bottom = make(small_cfg(latent_dim=4, placement="bottom", both_directions=True))
    assert bottom.contrasted_pairs(4) == make(small_cfg(latent_dim=4, placement="bottom")).contrasted_pairs(4)


def test_hard_bits_are_exactly_binary_and_gradients_reach_every_part():
    method = make(small_cfg(latent_dim=4))
    captured = []
    method.branch.latent.register_forward_hook(lambda module, args, out: captured.append(out))
    out = method(views(), torch.full((6,), -1))
    assert set(captured[0].unique().tolist()) <= {0.0, 1.0}
    out["loss"].backward()
    for name in ["backbone.conv.weight", "projector.0.weight", "branch.pi.weight", "branch.rho.weight"]:
        grad = dict(method.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_identity_latent_reduces_to_simclr_multicrop_loss():
    """A Gaussian whose scale is zero is the identity: the loss is exactly SimCLR's multi-crop InfoNCE."""
    method = make(small_cfg(latent="gaussian"), num_global_views=2)
    with torch.no_grad():
        method.branch.latent.scale.weight.zero_()
        method.branch.latent.scale.bias.fill_(-1e4)  # softplus -> 0
    x = views(2, 3)
    loss = method(x, torch.full((6,), -1))["loss"]
    projections = [method.projector(method.backbone(v)) for v in x]
    torch.testing.assert_close(loss, multicrop_info_nce(projections, 2, 0.1))


@pytest.mark.parametrize(("placement", "stochastic"), [("top", {0, 1}), ("bottom", {2, 3, 4})])
def test_placement_selects_global_or_local_views(placement, stochastic):
    method = make(small_cfg(latent_dim=4, placement=placement))
    inputs = []
    method.branch.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    x = views(2, 3)
    method(x, torch.full((6,), -1))
    with torch.no_grad():
        features = [method.backbone(v) for v in x]
    chunks = inputs[0].chunk(len(stochastic))
    sampled = [k for h in chunks for k, f in enumerate(features) if torch.allclose(h, f, atol=1e-6)]
    assert sorted(sampled) == sorted(stochastic)  # each stochastic view sampled exactly once


def test_bottom_placement_without_local_views_is_rejected():
    method = make(small_cfg(placement="bottom"))
    with pytest.raises(ValueError, match="placement=bottom"):
        method(views(2, 0), torch.full((6,), -1))


def test_gaussian_scale_comes_from_the_opposing_view():
    top = make(small_cfg(latent="gaussian", latent_dim=4))
    assert [top.opposing_view(k) for k in (0, 1)] == [1, 0]
    bottom = make(small_cfg(latent="gaussian", placement="bottom"))
    assert [bottom.opposing_view(k) for k in (2, 3, 4, 5)] == [0, 1, 0, 1]
    own = make(small_cfg(latent="gaussian", gaussian_variance="own"))
    assert own.opposing_view(1) == 1

    # In the two-view loss only view 1 is stochastic; its scale must depend on view 0's features only.
    x = views()
    captured = []
    top.branch.register_forward_hook(lambda module, args, out: captured.append(args[1]))
    top(x, torch.full((6,), -1))
    torch.testing.assert_close(captured[0], top.backbone(x[0]))
    out = top(x, torch.full((6,), -1))
    out["loss"].backward()
    assert top.branch.latent.scale.weight.grad.abs().sum() > 0
    assert out["latent_std"] > 0


def test_gumbel_temperature_follows_single_cycle_cosine():
    method = make(small_cfg(latent_dim=4))
    for step, expected in [(0, 1.0), (50, 0.55), (100, 0.1), (150, 0.1)]:
        method.on_step_start(step, 100)
        assert method.branch.latent.temperature == pytest.approx(expected)


def test_eval_mode_is_deterministic():
    method = make(small_cfg(latent_dim=4)).eval()
    x = views()
    with torch.no_grad():
        assert torch.equal(method(x, torch.full((6,), -1))["loss"], method(x, torch.full((6,), -1))["loss"])
    method.train()
    with torch.no_grad():
        assert not torch.equal(
            method(x, torch.full((6,), -1))["loss"], method(x, torch.full((6,), -1))["loss"]
        )


def test_code_is_binary_for_bernoulli_and_mean_for_gaussian():
    h = torch.randn(5, WIDTH)
    bern = StochasticBranch(WIDTH, "bernoulli", 4, "soft", 1.0)
    assert set(bern.code(h).unique().tolist()) <= {0.0, 1.0}
    gauss = StochasticBranch(WIDTH, "gaussian", 4, "soft", 1.0)
    torch.testing.assert_close(gauss.code(h), gauss.pi(h))


def test_supervised_bernoulli_bypass_probability():
    torch.manual_seed(0)
    x = views(1, 0, batch=8)
    labels = torch.arange(8) % 3
    always_bypass = SupervisedBernoulli(
        TinyBackbone(), WIDTH, StochConConfig(latent_dim=4, supervised_bypass_prob=1.0), 3
    )
    logits, h, _, _ = always_bypass.logits(x[0])
    torch.testing.assert_close(logits, always_bypass.classifier(h))
    never = SupervisedBernoulli(
        TinyBackbone(), WIDTH, StochConConfig(latent_dim=4, supervised_bypass_prob=0.0), 3
    )
    captured = []
    never.branch.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    logits, _, _, _ = never.logits(x[0])
    torch.testing.assert_close(logits, never.classifier(captured[0]))
    out = never(x, labels)
    out["loss"].backward()
    assert never.branch.pi.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="label -1"):
        never(x, torch.full((8,), -1))


def test_bernoulli_metrics_hand_checked():
    branch = StochasticBranch(WIDTH, "bernoulli", 2, "hard", 0.3)
    phi = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # sigmoid: 0.5 and 0.75
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    metrics = branch.metrics([z], [phi], [None])
    assert metrics["active_bits"] == pytest.approx(1.5)
    assert metrics["active_fraction"] == pytest.approx(0.75)
    assert metrics["bit_probability"] == pytest.approx(0.625)
    assert metrics["bit_certainty"] == pytest.approx(
        0.25
    )  # mean of |2 * 0.5 - 1| = 0 and |2 * 0.75 - 1| = 0.5
    assert metrics["gumbel_temperature"] == pytest.approx(0.3)


@pytest.mark.parametrize("method_name", ["simclr", "stochcon"])
def test_views_together_switch_sets_batch_norm_statistics_per_call(method_name):
    """views_together=false calls the backbone and projector once per view: with batch norm in train mode
    its loss is the one computed view by view; in eval mode (running statistics) both settings agree."""
    from stochcon.simclr import SimCLR

    def build(together: bool):
        cfg = SimCLRConfig(proj_hidden_dim=32, proj_output_dim=8, proj_norm="bn", views_together=together)
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(3, WIDTH, 1), nn.BatchNorm2d(WIDTH), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if method_name == "simclr":
            return SimCLR(backbone, WIDTH, cfg, 2)
        return StochCon(backbone, WIDTH, cfg, small_cfg(latent_dim=4), 2)

    x = views()
    together, separate = build(True), build(False)
    torch.manual_seed(5)
    loss_together = together(x, torch.zeros(6))["loss"]
    torch.manual_seed(5)
    loss_separate = separate(x, torch.zeros(6))["loss"]
    assert not torch.allclose(loss_together, loss_separate)  # different batch statistics
    if method_name == "simclr":
        by_view = [separate.projector(separate.backbone(v)) for v in x]
        assert torch.allclose(loss_separate, info_nce(by_view[0], by_view[1], SIMCLR.temperature), atol=1e-6)
    together, separate = build(True).eval(), build(False).eval()  # fresh running statistics
    assert torch.allclose(together(x, torch.zeros(6))["loss"], separate(x, torch.zeros(6))["loss"], atol=1e-6)
