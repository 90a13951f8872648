"""Linear probe, feature extraction and the k-NN / linear / neural-collapse / MINE command lines on
Fashion-MNIST IDX files."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from common.augment import build_eval_transform
from common.backbones import BackboneConfig, build_backbone, load_backbone
from common.data import (
    DataConfig,
    DatasetInfo,
    InMemoryImageDataset,
    build_dataset,
    dataset_info,
    stratified_subset,
)
from evaluation import knn as knn_cli
from evaluation import linear as linear_cli
from evaluation import mine as mine_cli
from evaluation import neural_collapse as collapse_cli
from evaluation.features import extract_features, extract_inputs_and_features
from evaluation.linear import LinearProbeConfig, _learning_rate, linear_probe, train_linear_classifier
from evaluation.mine import mine_bits
from evaluation.neural_collapse import collapse_metrics
from tests.chance import accuracy_beyond_chance
from tests.eval_data import save_random_backbone

# Fashion-MNIST-format test split of the fixture below: 100 images, 10 classes. An accuracy of at least this
# much is reached by guessing with probability < 1e-6 (binomial tail), so asserting it shows learning.
ABOVE_CHANCE = accuracy_beyond_chance(100, 10)


def separable_problem(n, d=32, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(classes, d, generator=generator)
    x = torch.randn(n, d, generator=generator) * 3 + 5  # offset and scale: standardisation must cope
    y = (x @ weights.T).argmax(dim=1)
    return x, y


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_linear_probe_learns_separable_problem(optimizer):
    x, y = separable_problem(4000)
    lr = 0.5 if optimizer == "sgd" else 20.0  # LARS steps are lr * eta * |w| / |g|
    cfg = LinearProbeConfig(epochs=30, batch_size=128, optimizer=optimizer, lr=lr)
    accuracy = linear_probe(x[:3000], y[:3000], x[3000:], y[3000:], cfg)
    # The labels are the argmax of a linear map of x, so a linear classifier can score 1.0; the requirement
    # is that the probe gets within 5 points of that (chance is 0.2).
    assert accuracy["top1"] > 0.95
    assert accuracy["top5"] == 1.0  # five classes


def test_standardisation_is_folded_into_the_classifier():
    x, y = separable_problem(500)
    cfg = LinearProbeConfig(epochs=2, batch_size=100, lr=0.1)
    folded = train_linear_classifier(x, y, 5, cfg, seed=3)
    unfolded_cfg = LinearProbeConfig(epochs=2, batch_size=100, lr=0.1, standardize=False)
    mean, std = x.mean(0), x.std(0)
    plain = train_linear_classifier((x - mean) / std, y, 5, unfolded_cfg, seed=3)
    # Both trainings see bit-identical standardised features, so the two layers differ only by the folding's
    # float32 rounding: W/std, the new bias and the dot products of D=32 terms each lose at most about
    # (D + 2) u of the sum of the absolute terms (u = 2^-24); allow twice that bound.
    weight = plain.weight.detach() / std
    magnitude = x.abs() @ weight.abs().T + (weight.abs() @ mean.abs()) + plain.bias.detach().abs()
    bound = 2 * (x.shape[1] + 2) * 2.0 ** -24 * magnitude
    assert ((folded(x) - plain((x - mean) / std)).abs() <= bound).all()


def test_probe_progress_bar(capsys):
    x, y = separable_problem(100)
    train_linear_classifier(x, y, 5, LinearProbeConfig(epochs=2, batch_size=50), progress=True)
    assert "linear probe" in capsys.readouterr().err
    train_linear_classifier(x, y, 5, LinearProbeConfig(epochs=2, batch_size=50))
    assert capsys.readouterr().err == ""


def test_learning_rate_schedules():
    # float64 arithmetic, exact up to a few roundings (1e-16 relative): approx's default (1e-6, 1e-12 absolute
    # at 0) holds it.
    cosine = LinearProbeConfig(lr=0.2, schedule="cosine")
    assert _learning_rate(cosine, 0, 100, 10) == pytest.approx(0.2)
    assert _learning_rate(cosine, 50, 100, 10) == pytest.approx(0.1)
    assert _learning_rate(cosine, 100, 100, 10) == pytest.approx(0.0)
    # Places205 / iNaturalist protocol: x0.1 twice at equal intervals.
    step = LinearProbeConfig(lr=0.2, schedule="step", milestones=[1 / 3, 2 / 3])
    assert [_learning_rate(step, s, 84, 1) for s in (0, 27, 28, 55, 56, 83)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    with pytest.raises(ValueError, match="probe.schedule"):
        _learning_rate(LinearProbeConfig(schedule="linear"), 0, 10, 1)


class PerImage(Dataset):
    """The same images without ``.images``, so extraction takes the per-image DataLoader path."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


class InFloat64(nn.Module):
    """The backbone in float64: only summation order can then tell two extraction paths apart."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone.double()

    def forward(self, images):
        return self.backbone(images.double())


def test_feature_extraction_fast_path_equals_per_image_path(capsys):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 20, 20), dtype=torch.uint8)
    dataset = InMemoryImageDataset(images, torch.arange(37) % 4)
    backbone, _ = build_backbone(BackboneConfig(name="small_convnet", width=4), in_chans=3)
    backbone = InFloat64(backbone)
    transform = build_eval_transform(DatasetInfo(1, 20, 4, (0.3,), (0.4,)), 3, image_size=16)
    backbone.train()
    fast_x, fast_y = extract_features(backbone, dataset, transform, batch_size=8)
    slow_x, slow_y = extract_features(backbone, PerImage(dataset), transform, batch_size=5)
    assert backbone.training  # mode restored
    assert fast_x.shape == (37, 32)
    assert torch.equal(fast_y, slow_y) and torch.equal(fast_y, torch.arange(37) % 4)
    # The transform gives the same float32 pixels per image in a batch or alone; the float64 forward then
    # differs only in summation order (batch 8 vs 5), about 1e-15 relatively. Rounded to the float32 the
    # features are returned in, that is at most one float32 ulp apart: 2^-23 = 2 * 2^-24 relative.
    assert torch.allclose(fast_x, slow_x, rtol=2 * 2.0 ** -24, atol=0)
    subset_x, subset_y = extract_features(backbone, dataset, transform, batch_size=8,
                                          indices=torch.tensor([3, 30]))
    assert torch.allclose(subset_x, fast_x[[3, 30]], rtol=2 * 2.0 ** -24, atol=0) and subset_y.tolist() == [3, 2]
    inputs, kept_x, kept_y = extract_inputs_and_features(backbone, dataset, transform, batch_size=8)
    assert torch.equal(kept_x, fast_x) and torch.equal(kept_y, fast_y)
    assert torch.equal(inputs, transform(images).float())  # what the backbone saw
    assert capsys.readouterr().err == ""
    extract_features(backbone, PerImage(dataset), transform, batch_size=5, progress=True)
    assert "features" in capsys.readouterr().err


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    """Fashion-MNIST-format IDX files whose classes differ in brightness pattern (learnable by k-NN)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, label * 2:label * 2 + 6, :] += 180
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def saved_backbone(tmp_path):
    return save_random_backbone(tmp_path / "run", in_chans=1, width=8).parent


def knn_features(fashion_root, saved_backbone):
    """Train and test features of the fixture as the command lines extract them (native size, no crop)."""
    backbone, _ = load_backbone(saved_backbone)
    data = DataConfig(name="fashion_mnist", root=str(fashion_root))
    transform = build_eval_transform(dataset_info(data), 1, None)
    train = extract_features(backbone, build_dataset(data, "train"), transform)
    test = extract_features(backbone, build_dataset(data, "test"), transform)
    return (*train, *test)


def test_knn_and_linear_cli_write_json_and_refuse_to_overwrite(fashion_root, saved_backbone, capsys):
    data_args = ["data.name=fashion_mnist", f"data.root={fashion_root}", "device=cpu", "num_workers=0"]
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "k=[20,5]"]) == 0
    output = saved_backbone / "eval_knn_fashion_mnist.json"
    record = json.loads(output.read_text())
    assert record["protocol"] == "knn" and record["config"]["k"] == [20, 5]
    # A random convnet separates these brightness patterns: far above chance (0.1).
    assert record["results"]["knn_top1_k20"] >= ABOVE_CHANCE and record["results"]["knn_top1_k5"] >= ABOVE_CHANCE
    assert record["results"]["temperature"] == 0.1  # the default protocol, wu2018
    before = output.read_text()
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args]) == 2
    assert "exists" in capsys.readouterr().err and output.read_text() == before
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "overwrite=true", "k=[1]"]) == 0
    assert set(json.loads(output.read_text())["results"]) == {"temperature", "knn_top1_k1", "knn_top5_k1"}
    capsys.readouterr()
    # DINO's protocol, one key away: k=20 (and 200, here clipped to the 300-image bank), T=0.07
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "overwrite=true", "protocol=dino",
                         "progress_bar=false"]) == 0
    dino = json.loads(output.read_text())["results"]
    assert set(dino) == {"temperature", "knn_top1_k20", "knn_top5_k20", "knn_top1_k200", "knn_top5_k200"}
    assert dino["temperature"] == 0.07 and "k-NN" not in capsys.readouterr().err
    train_x, train_y, test_x, test_y = knn_features(fashion_root, saved_backbone)
    assert dino["knn_top1_k20"] == knn_cli.knn_accuracy(train_x, train_y, test_x, test_y, 20, 0.07)["top1"]
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "protocol=wu"]) == 2

    linear_output = saved_backbone.parent / "linear.json"
    assert linear_cli.main(["--checkpoint", str(saved_backbone / "backbone.safetensors"), *data_args,
                            "probe.epochs=20", "probe.batch_size=64", "--output", str(linear_output)]) == 0
    results = json.loads(linear_output.read_text())["results"]
    assert results["linear_top1"] >= ABOVE_CHANCE and results["linear_top5"] >= results["linear_top1"]


def test_linear_cli_with_augmentation_keeps_the_backbone_frozen(fashion_root, saved_backbone, monkeypatch):
    from common.backbones import load_backbone

    backbone, dim = load_backbone(saved_backbone)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    monkeypatch.setattr(linear_cli, "load_eval_backbone", lambda checkpoint: (backbone, dim, 1))
    output = saved_backbone / "augmented.json"
    assert linear_cli.main(["--checkpoint", str(saved_backbone), "data.name=fashion_mnist",
                            f"data.root={fashion_root}", "device=cpu", "num_workers=0", "augment=true",
                            "train_augment.crop_scale=[0.6,1.0]", "probe.epochs=8", "probe.batch_size=32",
                            "probe.lr=1.0", f"output={output}"]) == 0
    results = json.loads(output.read_text())["results"]
    assert results["linear_top1"] >= ABOVE_CHANCE
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_cli_errors_are_one_line(fashion_root, saved_backbone, capsys):
    assert knn_cli.main(["data.name=fashion_mnist"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert knn_cli.main(["--checkpoint", str(saved_backbone), "k=abc"]) == 2
    assert "k" in capsys.readouterr().err
    missing = saved_backbone.parent / "nowhere"
    assert linear_cli.main(["--checkpoint", str(missing), f"data.root={fashion_root}",
                            "output=/tmp/never_written.json"]) == 2
    assert "not found" in capsys.readouterr().err


def test_final_evaluation_callback(fashion_root, saved_backbone):
    from types import SimpleNamespace

    from accelerate import Accelerator

    from common.backbones import load_backbone
    from common.data import DataConfig
    from common.method import Method
    from evaluation.final import FinalEvalConfig, evaluate_method

    class Reporting(Method):
        """A method that reports one figure of its own from the features it is handed."""

        def forward(self, views, labels):
            raise AssertionError("not trained here")

        def evaluate_features(self, features):
            return {"test_images": float(len(features.test_x))}

    backbone, feature_dim = load_backbone(saved_backbone)
    method = Reporting(backbone, feature_dim)
    cfg = SimpleNamespace(data=DataConfig(name="fashion_mnist", root=str(fashion_root), num_workers=0),
                          augment=SimpleNamespace(image_size=28), backbone=BackboneConfig(in_chans=None),
                          eval=FinalEvalConfig(knn_k=[50, 20], linear_epochs=10, batch_size=64), seed=0,
                          progress_bar=False)
    accelerator = Accelerator(cpu=True)
    init = evaluate_method(method, cfg, accelerator, "init")
    assert set(init) == {"knn_top1_k50_at_init", "knn_top1_k20_at_init"}
    assert init["knn_top1_k50_at_init"] >= ABOVE_CHANCE
    final = evaluate_method(method, cfg, accelerator, "final")
    assert set(final) == {"knn_top1_k50", "knn_top1_k20", "linear_top1", "linear_top5", "test_images"}
    assert final["knn_top1_k50"] == init["knn_top1_k50_at_init"]  # same weights, same bank
    assert final["linear_top1"] >= ABOVE_CHANCE and final["test_images"] > 0
    cfg.eval = FinalEvalConfig(knn_at_init=False, linear=False, max_train_images=50, knn_protocol="dino")
    assert evaluate_method(method, cfg, accelerator, "init") == {}
    final = evaluate_method(method, cfg, accelerator, "final")
    assert set(final) == {"knn_top1_k20", "knn_top1_k200", "knn_k200_used", "test_images"}
    assert final["knn_k200_used"] == 50  # k = 200 above a bank of 50: the whole bank voted, and the result says so
    with pytest.raises(ValueError, match="stage"):
        evaluate_method(method, cfg, accelerator, "middle")


def test_neural_collapse_and_mine_command_lines(fashion_root, saved_backbone):
    data_args = ["--checkpoint", str(saved_backbone), "data.name=fashion_mnist", f"data.root={fashion_root}",
                 "device=cpu", "num_workers=0", "progress_bar=false"]
    assert collapse_cli.main(data_args) == 0
    record = json.loads((saved_backbone / "eval_neural_collapse_fashion_mnist.json").read_text())
    train_x, train_y, test_x, test_y = knn_features(fashion_root, saved_backbone)
    # the same extraction and the same float64 formulas: equal, not close
    assert record["results"] == collapse_metrics((train_x, train_y), (test_x, test_y))

    assert mine_cli.main([*data_args, "images=120", "steps=30", "mine_batch_size=32", "input_size=14"]) == 0
    results = json.loads((saved_backbone / "eval_mine_fashion_mnist.json").read_text())["results"]
    assert (results["images"], results["input_dim"], results["feature_dim"]) == (120, 14 * 14, 64)
    # MINE sees the (input, feature) pairs of the shared extraction: the same estimate from them directly
    backbone, _ = load_backbone(saved_backbone)
    data = DataConfig(name="fashion_mnist", root=str(fashion_root))
    dataset = build_dataset(data, "train")
    indices = torch.tensor(stratified_subset(dataset.targets, 120))
    transform = build_eval_transform(dataset_info(data), 1, None)
    inputs, features, _ = extract_inputs_and_features(backbone, dataset, transform, indices=indices)
    inputs = torch.nn.functional.interpolate(inputs, size=(14, 14), mode="area")
    assert results["mutual_information_bits"] == mine_bits(inputs, features, steps=30, batch_size=32)


def test_vcreg_collapse_analysis_of_a_run_folder(fashion_root, saved_backbone, tmp_path):
    from vcreg.analysis import collapse

    (saved_backbone / "config.yaml").write_text(
        f"data:\n  name: fashion_mnist\n  root: {fashion_root}\n  num_workers: 0\nprogress_bar: false\n")
    output = tmp_path / "collapse.json"
    assert collapse.main(["--runs", str(saved_backbone), "--mine-images", "60", "--mine-steps", "5",
                          "--output", str(output)]) == 0
    (result,) = json.loads(output.read_text())
    train_x, train_y, test_x, test_y = knn_features(fashion_root, saved_backbone)
    assert {k: result[k] for k in ("cdnv", "ncc_top1", "ncc_top1_test")} == collapse_metrics(
        (train_x, train_y), (test_x, test_y))
    assert result["mutual_information_bits"] >= 0 and output.with_suffix(".png").stat().st_size > 0
