"""VCReg methods, collapse metrics, MINE, two moons and a short end-to-end run of vcreg/train.py."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import SmallConvNet
from common.errors import ConfigError
from common.info_nce import info_nce
from evaluation.mine import mine_bits
from evaluation.neural_collapse import cdnv, ncc_accuracy
from vcreg.analysis.two_moons import TwoMoonsConfig, boundary_margin, three_layer_net, train_run
from vcreg.losses import decov_loss, vicreg_loss, wldreg_loss
from vcreg.method import (
    DeCovConfig,
    SimCLRBaseline,
    SimCLRConfig,
    SupervisedClassifier,
    VICRegBaseline,
    VICRegConfig,
    WLDRegConfig,
    build_vcreg_method,
)
from vcreg.train import main as train_main


def test_cdnv_and_ncc_on_hand_checked_example():
    # class 0 at x=0 and 2 (mean 1, Var 1), class 1 at x=10 and 12 (mean 11, Var 1): (1 + 1) / (2 * 100)
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert cdnv(features, labels) == pytest.approx(0.01)
    # three classes: pairs (0,1), (0,2), (1,2) averaged
    features3 = torch.cat([features, torch.tensor([[0.0, 4.0], [0.0, 6.0]])])
    labels3 = torch.cat([labels, torch.tensor([2, 2])])
    expected = (2 / 200 + 2 / (2 * (1 + 25)) + 2 / (2 * (121 + 25))) / 3
    assert cdnv(features3, labels3) == pytest.approx(expected)
    queries = torch.tensor([[5.0, 0.0], [7.0, 0.0], [0.0, 5.0]])  # nearest centres: 1 (x=1), 11, (0,5)
    assert ncc_accuracy(features3, labels3, queries, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_mine_approaches_gaussian_mutual_information():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g)
    rho = 0.9
    z = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(4000, 1, generator=g)
    true_bits = -0.5 * math.log(1 - rho ** 2) / math.log(2)
    estimate = mine_bits(x, z, steps=600, batch_size=256, lr=1e-3)
    independent = mine_bits(x, torch.randn(4000, 1, generator=g), steps=600, batch_size=256, lr=1e-3)
    assert 0.6 * true_bits < estimate < 1.15 * true_bits
    assert independent < 0.15


# The methods' losses against the same formulas computed outside them, in float64: only the order of a few
# operations can differ, a relative error of a few units of 2^-53.
F64, EXACT = torch.float64, {"rel": 1e-12}


def test_supervised_and_decov_losses():
    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=4).to(F64)
    images, labels = torch.randn(8, 1, 16, 16, dtype=F64), torch.arange(8) % 3
    plain = SupervisedClassifier(backbone, backbone.num_features, 3, label_smoothing=0.1).to(F64)
    out = plain([images], labels)
    logits = plain.classifier(backbone(images))
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), **EXACT)
    features = backbone(images)
    for name, weight, penalty, cfg in (
            ("decov", 0.5, decov_loss(features), DeCovConfig(weight=0.5)),
            ("wldreg", 0.01, wldreg_loss(features, gamma=2.0, variant="logdet"),
             WLDRegConfig(weight=0.01, gamma=2.0, variant="logdet"))):
        regularised = build_vcreg_method(cfg, backbone, backbone.num_features, 3).to(F64)
        regularised.classifier = plain.classifier
        out = regularised([images], labels)
        expected = F.cross_entropy(plain.classifier(features), labels) + weight * penalty
        assert out["loss"].item() == pytest.approx(expected.item(), **EXACT)
        assert out[name].item() == pytest.approx(penalty.item(), **EXACT)
    with pytest.raises(ValueError, match="unlabelled"):
        plain([images], torch.full((8,), -1))


def test_joint_embedding_objectives():
    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=4).to(F64)
    views = [torch.randn(6, 1, 16, 16, dtype=F64), torch.randn(6, 1, 16, 16, dtype=F64)]
    vicreg = VICRegBaseline(backbone, backbone.num_features, VICRegConfig(projector=[16, 8])).to(F64)
    # Appendix C.4 by default: two linear layers, BatchNorm after each
    assert [type(m).__name__ for m in vicreg.projector] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    out = vicreg(views, torch.full((6,), -1))
    z1, z2 = vicreg.projector(backbone(torch.cat(views))).chunk(2)
    assert out["loss"].item() == pytest.approx(vicreg_loss(z1, z2)["loss"].item(), **EXACT)
    released = VICRegBaseline(backbone, backbone.num_features, VICRegConfig(projector=[16, 16, 8],
                                                                            projector_last_norm=False))
    assert isinstance(released.projector[-1], nn.Linear) and released.projector[-1].bias is None
    simclr = SimCLRBaseline(backbone, backbone.num_features, SimCLRConfig(projector=[16, 8], temperature=0.5)).to(F64)
    out = simclr(views, torch.full((6,), -1))
    z1, z2 = simclr.projector(backbone(torch.cat(views))).chunk(2)
    assert out["loss"].item() == pytest.approx(info_nce(z1, z2, 0.5).item(), **EXACT)


def test_two_moons_run_and_margin():
    cfg = TwoMoonsConfig(samples=100, hidden=16, steps=150, lr=1e-2, runs=1)
    grid = torch.tensor([[0.5, 0.25], [-1.0, 1.0]])
    for regulariser in ("none", "vcreg"):
        result = train_run(regulariser, cfg, seed=0, grid_points=grid)
        assert result["train_accuracy"] > 0.8 and result["grid_probability"].shape == (2,)
    layers = {placement: [type(m).__name__ for m in three_layer_net("vcreg", replace(cfg, placement=placement))]
              for placement in ("blocks", "final")}
    assert layers["blocks"] == ["Linear", "ReLU", "VCReg", "Linear", "ReLU", "VCReg", "Linear"]
    assert layers["final"] == ["Linear", "ReLU", "Linear", "ReLU", "VCReg", "Linear"]
    batch_mean = three_layer_net("vcreg", replace(cfg, normalization="batch_mean"))
    assert [m.normalization for m in batch_mean if type(m).__name__ == "VCReg"] == ["batch_mean"] * 2
    with pytest.raises(ConfigError, match="unknown placement 'middle'"):
        train_run("vcreg", replace(cfg, placement="middle"), seed=0, grid_points=grid)
    # a vertical boundary between columns x=0 and x=1 of a 3x3 grid: a point at x=-1 is 1 to 1.5 away
    xs = ys = torch.tensor([0.0, 1.0, 2.0]).numpy()
    probability = torch.tensor([[0.0, 1.0, 1.0]] * 3).numpy()
    assert boundary_margin(probability, xs, ys, torch.tensor([[-1.0, 1.0]]).numpy()) == pytest.approx(2.0)


@pytest.mark.slow
def test_train_entry_point_writes_supervised_figures(tmp_path):
    out = tmp_path / "run"
    code = train_main(["--config", "vcreg/configs/fashion_mnist_vcreg.yaml", f"output_dir={out}", "max_steps=4",
                       "batch_size=64", "data.subset=512", "eval.max_train_images=256", "eval.linear_epochs=1",
                       "progress_bar=false", "tracker=none", "vcreg.overrides={features.2: {alpha: 1.28}}"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("test_top1", "cdnv", "ncc_top1", "ncc_top1_test", "linear_top1"):
        assert key in results and math.isfinite(results[key])
    # the saved backbone has no VCReg entries: a plain SmallConvNet loads it strictly
    from common.backbones import load_backbone

    backbone, _ = load_backbone(out)
    assert isinstance(backbone, nn.Module)
    assert train_main(["--config", "vcreg/configs/fashion_mnist_vcreg.yaml", f"output_dir={tmp_path / 'bad'}",
                       "vcreg.placement=everywhere", "tracker=none"]) == 2


def test_trainer_hands_its_backward_scale_to_the_vcreg_layers_under_autocast(tmp_path):
    """Mixed precision with gradient accumulation: the trainer gives every VCReg layer the run's BackwardScale
    (the grad scaler, the accumulation steps, the world size) and two steps train with finite losses (the layers
    used to raise under autocast because nothing attached the scale). bf16: the CPU's autocast (fp16 on a CPU is
    refused, since Accelerate would run it in float32; a real GradScaler through the layer is test_vcreg_layer's)."""
    from accelerate.state import AcceleratorState, GradientState
    from trainer_runs import write_idx_fashion_mnist

    from common.config import load_config
    from common.trainer import Trainer
    from vcreg import VCReg
    from vcreg.train import VCRegTrainConfig, build_method, evaluate

    root = write_idx_fashion_mnist(tmp_path / "data")
    cfg = load_config(VCRegTrainConfig, [
        "--config", "vcreg/configs/fashion_mnist_vcreg.yaml", f"data.root={root}", "data.subset=null",
        f"output_dir={tmp_path / 'run'}", "max_steps=2", "batch_size=64", "grad_accum_steps=2",
        "mixed_precision=bf16", "backbone.width=4", "eval.knn_at_init=false", "eval.linear=false",
        "eval.max_train_images=null", "tracker=none", "progress_bar=false", "log_every_steps=1"])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    trainer = Trainer(cfg, build_method, evaluate)
    results = trainer.fit()
    AcceleratorState._reset_state(True)
    layers = [m for m in trainer.method.modules() if isinstance(m, VCReg)]
    assert layers and all(layer.backward_scale.accumulation_steps == 2 for layer in layers)
    assert all(layer.backward_scale.world_size == 1 for layer in layers)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert results["steps"] == 2
