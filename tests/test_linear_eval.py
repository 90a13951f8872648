"""Linear probe, feature extraction and the k-NN / linear command lines on Fashion-MNIST IDX files."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from common.augment import build_eval_transform
from common.backbones import BackboneConfig, build_backbone, save_backbone
from common.data import DatasetInfo, InMemoryImageDataset
from evaluation import knn as knn_cli
from evaluation import linear as linear_cli
from evaluation.features import extract_features
from evaluation.linear import LinearProbeConfig, _learning_rate, linear_probe, train_linear_classifier


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
    assert accuracy["top1"] > 0.95
    assert accuracy["top5"] == 1.0


def test_standardisation_is_folded_into_the_classifier():
    x, y = separable_problem(500)
    cfg = LinearProbeConfig(epochs=2, batch_size=100, lr=0.1)
    folded = train_linear_classifier(x, y, 5, cfg, seed=3)
    unfolded_cfg = LinearProbeConfig(epochs=2, batch_size=100, lr=0.1, standardize=False)
    mean, std = x.mean(0), x.std(0)
    plain = train_linear_classifier((x - mean) / std, y, 5, unfolded_cfg, seed=3)
    assert torch.allclose(folded(x), plain((x - mean) / std), atol=1e-4)


def test_learning_rate_schedules():
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


def test_feature_extraction_fast_path_equals_per_image_path():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 20, 20), dtype=torch.uint8)
    dataset = InMemoryImageDataset(images, torch.arange(37) % 4)
    backbone, _ = build_backbone(BackboneConfig(name="small_convnet", width=4), in_chans=3)
    transform = build_eval_transform(DatasetInfo(1, 20, 4, (0.3,), (0.4,)), 3, image_size=16)
    backbone.train()
    fast_x, fast_y = extract_features(backbone, dataset, transform, batch_size=8)
    slow_x, slow_y = extract_features(backbone, PerImage(dataset), transform, batch_size=5)
    assert backbone.training  # mode restored
    assert fast_x.shape == (37, 32)
    assert torch.equal(fast_y, slow_y) and torch.equal(fast_y, torch.arange(37) % 4)
    assert torch.allclose(fast_x, slow_x, atol=1e-5)
    subset_x, subset_y = extract_features(backbone, dataset, transform, batch_size=8,
                                          indices=torch.tensor([3, 30]))
    assert torch.allclose(subset_x, fast_x[[3, 30]], atol=1e-5) and subset_y.tolist() == [3, 2]


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
    torch.manual_seed(0)
    cfg = BackboneConfig(name="small_convnet", width=8)
    backbone, _ = build_backbone(cfg, in_chans=1)
    for module in backbone.modules():  # He initialisation keeps random features at unit scale
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    run = tmp_path / "run"
    run.mkdir()
    save_backbone(backbone, cfg, 1, run / "backbone.safetensors")
    return run


def test_knn_and_linear_cli_write_json_and_refuse_to_overwrite(fashion_root, saved_backbone, capsys):
    data_args = ["data.name=fashion_mnist", f"data.root={fashion_root}", "device=cpu", "num_workers=0"]
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "k=[20,5]"]) == 0
    output = saved_backbone / "eval_knn_fashion_mnist.json"
    record = json.loads(output.read_text())
    assert record["protocol"] == "knn" and record["config"]["k"] == [20, 5]
    # A random convnet separates these brightness patterns far above chance (0.1).
    assert record["results"]["knn_top1_k20"] > 0.5 and record["results"]["knn_top1_k5"] > 0.5
    before = output.read_text()
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args]) == 2
    assert "exists" in capsys.readouterr().err and output.read_text() == before
    assert knn_cli.main(["--checkpoint", str(saved_backbone), *data_args, "overwrite=true", "k=[1]"]) == 0
    assert set(json.loads(output.read_text())["results"]) == {"knn_top1_k1", "knn_top5_k1"}

    linear_output = saved_backbone.parent / "linear.json"
    assert linear_cli.main(["--checkpoint", str(saved_backbone / "backbone.safetensors"), *data_args,
                            "probe.epochs=20", "probe.batch_size=64", "--output", str(linear_output)]) == 0
    results = json.loads(linear_output.read_text())["results"]
    assert results["linear_top1"] > 0.5 and results["linear_top5"] >= results["linear_top1"]


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
    assert results["linear_top1"] > 0.3  # ten classes: chance is 0.1
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
    from evaluation.final import FinalEvalConfig, evaluate_backbone

    backbone, _ = load_backbone(saved_backbone)
    cfg = SimpleNamespace(data=DataConfig(name="fashion_mnist", root=str(fashion_root), num_workers=0),
                          augment=SimpleNamespace(image_size=28), backbone=BackboneConfig(in_chans=None),
                          eval=FinalEvalConfig(knn_k=50, linear_epochs=10, batch_size=64), seed=0)
    accelerator = Accelerator(cpu=True)
    init = evaluate_backbone(backbone, cfg, accelerator, "init")
    assert set(init) == {"knn_top1_at_init"} and init["knn_top1_at_init"] > 0.5
    final = evaluate_backbone(backbone, cfg, accelerator, "final")
    assert set(final) == {"knn_top1", "knn_top1_k20", "linear_top1", "linear_top5"}
    assert final["knn_top1"] == init["knn_top1_at_init"]  # same weights, same bank
    assert final["linear_top1"] > 0.5
    cfg.eval = FinalEvalConfig(knn_at_init=False, linear=False, max_train_images=50)
    assert evaluate_backbone(backbone, cfg, accelerator, "init") == {}
    assert set(evaluate_backbone(backbone, cfg, accelerator, "final")) == {"knn_top1", "knn_top1_k20"}
    with pytest.raises(ValueError, match="stage"):
        evaluate_backbone(backbone, cfg, accelerator, "middle")
