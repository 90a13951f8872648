import math

import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.info_nce import info_nce, multicrop_info_nce
from common.method import FeatureSplits
from stochcon.latents import LatentConfig, sample_gumbel_bernoulli
from stochcon.simclr import SimCLRConfig
from stochcon.stochcon import StochasticBranch, StochCon, StochConConfig
from stochcon.supervised import SupervisedBernoulli, SupervisedConfig

WIDTH = 16
# The tests that compare the method with its formula run in float64: the two sides differ only in the order of
# sums and products (batched against per-view calls), ~1e-15 relative, far inside assert_close's float64
# tolerance (1e-7) and far below any difference of formula.
F64 = torch.float64


class TinyBackbone(nn.Module):
    """Pooled features of any image size: mean over space of a 1x1 convolution (no batch-norm, so a view's
    features do not depend on which other views share its forward pass). With `relu`, a ReLU before the pooling
    as in a ResNet: every feature is >= 0."""

    def __init__(self, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, WIDTH, 1)
        self.relu = relu

    def forward(self, x):
        y = self.conv(x)
        return (y.relu() if self.relu else y).mean((2, 3))


HEAD = {"projector": [32, 8], "projector_norm": "none"}


def make(latent: LatentConfig, num_global_views: int = 2, relu: bool = False) -> StochCon:
    torch.manual_seed(0)
    return StochCon(TinyBackbone(relu), WIDTH, StochConConfig(**HEAD, stochcon=latent), num_global_views).to(F64)


def small_cfg(**overrides) -> LatentConfig:
    return LatentConfig(**overrides)


def views(n_global=2, n_local=0, batch=6):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 8, 8, generator=gen, dtype=F64) for _ in range(n_global)] + [
        torch.randn(batch, 3, 4, 4, generator=gen, dtype=F64) for _ in range(n_local)
    ]


def test_projectors_are_on_at_any_width_unless_switched_off():
    full = StochasticBranch(WIDTH, "bernoulli", None, "hard", 1.0)  # latent_dim null: the backbone width
    assert full.latent_dim == WIDTH
    assert full.pi.weight.shape == (WIDTH, WIDTH) and full.rho.weight.shape == (WIDTH, WIDTH)
    off = StochasticBranch(WIDTH, "gaussian", None, "hard", 1.0, projectors=False)
    assert isinstance(off.pi, nn.Identity) and isinstance(off.rho, nn.Identity) and off.latent_dim == WIDTH
    narrow = StochasticBranch(WIDTH, "gaussian", 4, "hard", 1.0)
    assert narrow.pi.weight.shape == (4, WIDTH) and narrow.rho.weight.shape == (WIDTH, 4)
    with pytest.raises(ConfigError, match="projectors=false .* latent_dim must be null or the backbone width"):
        StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0, projectors=False)
    with pytest.raises(ConfigError, match="latent_dim must be positive"):
        StochasticBranch(WIDTH, "bernoulli", 0, "hard", 1.0)


def test_full_width_bernoulli_over_relu_features_has_bits_that_vary_across_images():
    """Pooled ReLU features are >= 0: with pi and rho at the backbone width (latent_dim null) the code
    1[pi(h) >= 0] has bits that are 0 for some images and 1 for others, in evaluation and in the samples."""
    method = make(small_cfg(), relu=True)
    x = views(2, 0, batch=32)
    with torch.no_grad():
        h = method.backbone(x[0])
        assert (h >= 0).all()
        code = method.branch.code(h)
    varying = (code.min(0).values == 0) & (code.max(0).values == 1)
    assert varying.any()
    captured = []
    method.branch.latent.register_forward_hook(lambda module, args, out: captured.append(out))
    method(x, torch.full((32,), -1))
    sampled = captured[0]
    assert ((sampled.min(0).values == 0) & (sampled.max(0).values == 1)).any()


def test_bernoulli_without_projectors_refuses_nonnegative_features():
    """projectors=false reads h as the logits: over ReLU features every bit would have P(1) >= 1/2 and the code
    would be all ones, so the first batch stops the run with a ConfigError; features that can be negative are
    accepted (the code then varies)."""
    relu = make(small_cfg(projectors=False), relu=True)
    with pytest.raises(ConfigError, match="projectors=false .* all >= 0"):
        relu(views(), torch.full((6,), -1))
    supervised = SupervisedBernoulli(
        TinyBackbone(relu=True), WIDTH, SupervisedConfig(bypass_prob=0.5, stochcon=LatentConfig(projectors=False)), 3
    ).to(F64)
    with pytest.raises(ConfigError, match="all >= 0"):
        supervised(views(1, 0, batch=8), torch.arange(8) % 3)
    signed = make(small_cfg(projectors=False))
    signed(views(), torch.full((6,), -1))
    assert not signed.branch.features_unchecked  # checked once, on the first batch
    code = signed.branch.code(signed.backbone(views(1, 0, batch=32)[0]))
    assert ((code.min(0).values == 0) & (code.max(0).values == 1)).any()


def test_pi_init_gain_scales_the_bottleneck_and_the_logits():
    torch.manual_seed(0)
    default = StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0)
    torch.manual_seed(0)
    scaled = StochasticBranch(WIDTH, "bernoulli", 4, "hard", 1.0, pi_init_gain=3.0)
    # The same float32 product 3 w on both sides: equal to the bit.
    assert torch.equal(scaled.pi.weight, 3.0 * default.pi.weight)
    assert torch.equal(scaled.pi.bias, 3.0 * default.pi.bias)
    assert torch.equal(scaled.rho.weight, default.rho.weight)  # the decoder keeps its initialisation
    # The logits, in float64 against the exact 3 (w h + b): scaled's entries are 3w rounded to float32, off by at
    # most 2^-24 of their size, so each logit is off by at most 2^-24 (|3w| |h| + |3b|) (float64 adds ~1e-16).
    h = torch.randn(5, WIDTH, dtype=F64)
    w, b = default.pi.weight.to(F64), default.pi.bias.to(F64)
    bound = 2.0**-24 * 3 * (h.abs() @ w.abs().T + b.abs()) + 1e-12
    assert ((scaled.pi.to(F64)(h) - 3 * (h @ w.T + b)).abs() <= bound).all()
    method_pi = make(small_cfg(latent_dim=4, pi_init_gain=3.0)).branch.pi
    default_weight = make(small_cfg(latent_dim=4)).branch.pi.weight.float()  # make() widens float32 to float64
    assert torch.equal(method_pi.weight, (3.0 * default_weight).to(F64))
    with pytest.raises(ConfigError, match="pi_init_gain scales pi, which method.stochcon.projectors=false turns off"):
        StochasticBranch(WIDTH, "bernoulli", None, "hard", 1.0, pi_init_gain=3.0, projectors=False)
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
    """A Gaussian whose scale is zero, without pi and rho, is the identity: the loss is SimCLR's multi-crop
    InfoNCE."""
    method = make(small_cfg(latent="gaussian", projectors=False), num_global_views=2)
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
    # Which view each chunk is: float64 features agree to ~1e-15 with themselves and differ by O(0.1) between views.
    sampled = [k for h in chunks for k, f in enumerate(features) if torch.allclose(h, f, rtol=0, atol=1e-9)]
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


def test_supervised_bernoulli_bypass_probability_and_test_top1():
    torch.manual_seed(0)
    x = views(1, 0, batch=8)
    labels = torch.arange(8) % 3
    always_bypass = SupervisedBernoulli(TinyBackbone(), WIDTH, SupervisedConfig(bypass_prob=1.0), 3).to(F64)
    assert always_bypass.branch is None  # the plain supervised baseline builds no latent
    h = always_bypass.backbone(x[0])
    torch.testing.assert_close(always_bypass.head_input(h)[0], h)
    never = SupervisedBernoulli(TinyBackbone(), WIDTH, SupervisedConfig(bypass_prob=0.0,
                                                                        stochcon=LatentConfig(latent_dim=4)), 3).to(F64)
    captured = []
    never.branch.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    head_input, _, _ = never.head_input(never.backbone(x[0]))
    torch.testing.assert_close(head_input, captured[0])
    out = never(x, labels)
    out["loss"].backward()
    assert never.branch.pi.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="label -1"):
        never(x, torch.full((8,), -1))
    # test_top1 (Table 1's Supervised row): the eval-mode classifier through the deterministic latent
    never.eval()
    with torch.no_grad():
        test_x = never.backbone(x[0])
        predicted = never.classifier(never.branch(test_x)[0]).argmax(1)
        figures = never.evaluate_features(FeatureSplits(test_x, labels, test_x, labels))
    assert figures == {"test_top1": float((predicted == labels).double().mean())}


def test_bernoulli_metrics_hand_checked():
    branch = StochasticBranch(WIDTH, "bernoulli", 2, "hard", 0.3)
    phi = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # sigmoid: 0.5 and 0.75
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    metrics = branch.metrics([z], [phi], [None])
    # Exact sums of 0/1 and float32 sigmoids (~1e-7 relative), inside pytest.approx's 1e-6.
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
        head = {"projector": [32, 8], "projector_norm": "bn", "views_together": together}
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(3, WIDTH, 1), nn.BatchNorm2d(WIDTH), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if method_name == "simclr":
            return SimCLR(backbone, WIDTH, SimCLRConfig(**head), 2).to(F64)
        return StochCon(backbone, WIDTH, StochConConfig(**head, stochcon=small_cfg(latent_dim=4)), 2).to(F64)

    x = views()
    together, separate = build(True), build(False)
    torch.manual_seed(5)
    loss_together = together(x, torch.zeros(6))["loss"]
    torch.manual_seed(5)
    loss_separate = separate(x, torch.zeros(6))["loss"]
    assert not torch.allclose(loss_together, loss_separate)  # different batch statistics
    if method_name == "simclr":
        by_view = [separate.projector(separate.backbone(v)) for v in x]
        torch.testing.assert_close(loss_separate, info_nce(by_view[0], by_view[1], SimCLRConfig().temperature))
    together, separate = build(True).eval(), build(False).eval()  # fresh running statistics
    torch.testing.assert_close(together(x, torch.zeros(6))["loss"], separate(x, torch.zeros(6))["loss"])
