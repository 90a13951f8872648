"""Parameter groups a method declares: the optimiser sees them, a fixed-lr group keeps its rate, and the biases and
norm parameters take their own rate (``optim.bias_and_norm_lr_scale``)."""

import pytest
import torch
from torch import nn
from trainer_runs import run, write_idx_fashion_mnist

from common.backbones import SmallConvNet
from common.checkpoint import list_checkpoints, load_checkpoint
from common.errors import ConfigError
from common.method import Method, ParameterGroup
from common.optim import OptimConfig, build_optimizer, learning_rate, param_groups
from msbreg.byol import BYOL, BYOLConfig

PEAK = 0.8


def byol(fixed: bool) -> BYOL:
    return BYOL(SmallConvNet(in_chans=1, width=4), SmallConvNet(in_chans=1, width=4).num_features,
                BYOLConfig(projector=[16, 8], predictor=[16, 8], predictor_fixed_lr=fixed))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_the_optimiser_sees_the_groups_the_method_declares():
    method = byol(fixed=True)
    groups = param_groups(method, PEAK, 1e-5, exclude_bias_and_norm=True, bias_and_norm_lr_scale=0.25)
    optimizer = build_optimizer(OptimConfig(name="lars"), groups)
    seen = {group["name"]: group for group in optimizer.param_groups}
    assert list(seen) == ["backbone_and_projector", "backbone_and_projector_bias_and_norm", "predictor",
                          "predictor_bias_and_norm"]
    predictor = [p for p in method.predictor.parameters()]
    assert ids(seen["predictor"]["params"]) | ids(seen["predictor_bias_and_norm"]["params"]) == ids(predictor)
    # every trainable parameter once, the EMA target's (frozen) in none
    everything = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(everything) == len(ids(everything)) and ids(everything) == ids(
        p for p in method.parameters() if p.requires_grad)
    assert not ids(method.target_backbone.parameters()) & ids(everything)
    for name, group in seen.items():
        bias_and_norm = name.endswith("_bias_and_norm")
        assert all((p.ndim <= 1) == bias_and_norm for p in group["params"])
        assert group["lars_exclude"] == bias_and_norm
        assert group["weight_decay"] == (0.0 if bias_and_norm else 1e-5)
        assert group["base_lr"] == group["lr"] == (PEAK * 0.25 if bias_and_norm else PEAK)
        assert group["fixed_lr"] == name.startswith("predictor")


def test_one_group_by_default_and_for_any_module():
    names = [group["name"] for group in param_groups(byol(fixed=False), PEAK, 0.0)]
    assert names == ["backbone_and_heads", "backbone_and_heads_bias_and_norm"]
    linear = param_groups(nn.Linear(3, 2), PEAK, 0.0, exclude_bias_and_norm=False)
    assert [(g["name"], len(g["params"]), g["fixed_lr"]) for g in linear] == [("all", 2, False)]


def test_a_method_that_misplaces_a_parameter_is_a_bug():
    class Twice(Method):
        def __init__(self):
            super().__init__(nn.Linear(2, 2), 2)

        def forward(self, views, labels):
            return {}

        def parameter_groups(self):
            return [ParameterGroup("a", list(self.parameters())), ParameterGroup("b", [self.backbone.bias])]

    with pytest.raises(ValueError, match="exactly once"):
        param_groups(Twice(), PEAK, 0.0)


def test_a_bias_and_norm_rate_without_the_split_is_refused():
    with pytest.raises(ConfigError, match="bias_and_norm_lr_scale"):
        param_groups(byol(fixed=False), PEAK, 0.0, exclude_bias_and_norm=False, bias_and_norm_lr_scale=0.1)


def test_byol_with_a_fixed_lr_predictor_trains_and_its_rate_stays_fixed(tmp_path):
    """8 steps of BYOL on synthetic Fashion-MNIST, warm-up then cosine, a checkpoint after every step: in each,
    the predictor's groups are at their peak while the others are at the schedule's value of that step."""
    data = write_idx_fashion_mnist(tmp_path / "data")
    out = tmp_path / "run"
    done = run("msbreg/train.py", [
        "--config", "msbreg/configs/fashion_mnist_byol.yaml", f"output_dir={out}", f"data.root={data}",
        "data.num_workers=0", "epochs=1", "batch_size=64", "backbone.width=4", "method.projector=[32,16]",
        "method.predictor=[32,16]", "method.predictor_fixed_lr=true", "optim.bias_and_norm_lr_scale=0.5",
        "optim.warmup_epochs=0.5", "save_every_steps=1", "keep_last=8", "progress_bar=false", "tracker=none",
        "eval.linear=false", "eval.knn_at_init=false", "eval.knn_k=[5]"])
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 8
    peak = 1.0 * 64 / 256 * 2  # optim.lr x batch / 256 x views (linear_views)
    optim = OptimConfig(lr=1.0, warmup_epochs=0.5)
    rates = []
    for step, checkpoint in enumerate(checkpoints):
        state = load_checkpoint(checkpoint)
        groups = {group["name"]: group for group in state["optimizer"]["param_groups"] if "name" in group}
        assert groups["predictor"]["lr"] == peak and groups["predictor_bias_and_norm"]["lr"] == peak * 0.5
        scheduled = learning_rate(optim, step, 8, 8, peak)
        # the same float computation as the trainer's: equal, not close
        assert groups["backbone_and_projector"]["lr"] == scheduled
        assert groups["backbone_and_projector_bias_and_norm"]["lr"] == scheduled * 0.5
        rates.append(groups["backbone_and_projector"]["lr"])
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert rates[0] < max(rates) <= peak and rates[-1] < max(rates)  # a warm-up, then a decay
