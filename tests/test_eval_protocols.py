"""Issue-6 protocols: L-BFGS transfer probe, VOC07 SVMs, semi-supervised subsets, each end to end on disk."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from common.backbones import BackboneConfig, build_backbone, save_backbone
from evaluation import semi_supervised, transfer, voc07
from evaluation.__main__ import PROTOCOLS
from evaluation.logistic import default_l2_grid, fit_logistic_regression, select_and_refit, sklearn_C
from evaluation.splits import indices_of_names, read_subset_file, simclr_subset_file, stratified_fraction
from evaluation.voc07 import VOC_CLASSES, average_precision, read_labels, svm_mean_ap

# ------------------------------------------------------------------------------------------ L-BFGS probe


def logistic_problem(n=240, d=12, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(classes, d, generator=generator, dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = (x @ weights.T + 1.5 * torch.randn(n, classes, generator=generator, dtype=torch.float64)).argmax(1)
    return x, y


@pytest.mark.parametrize("l2", [1e-3, 1e-1, 3.0])
def test_lbfgs_probe_matches_sklearn(l2):
    x, y = logistic_problem()
    ours = fit_logistic_regression(x, y, 4, l2)
    reference = LogisticRegression(C=sklearn_C(l2, len(y)), tol=1e-10, max_iter=10000).fit(x.numpy(), y.numpy())
    scale = np.abs(reference.coef_).max()
    assert np.abs(ours.weight.numpy() - reference.coef_).max() < 1e-4 * max(scale, 1.0)
    # Softmax intercepts are defined up to a shared constant: compare them centred.
    centred = ours.bias.numpy() - ours.bias.numpy().mean()
    assert np.abs(centred - (reference.intercept_ - reference.intercept_.mean())).max() < 1e-3
    assert ours.accuracy(x, y) == pytest.approx(reference.score(x.numpy(), y.numpy()))


def test_l2_selection_on_validation_then_refit():
    assert len(default_l2_grid()) == 45
    assert default_l2_grid()[0] == pytest.approx(1e-5) and default_l2_grid()[-1] == pytest.approx(1e5)
    x, y = logistic_problem(n=400)
    grid = [1e-4, 1e-2, 1.0, 100.0]
    result = select_and_refit(x[:200], y[:200], x[200:300], y[200:300], 4, grid)
    assert len(result.val_accuracies) == 4
    # Huge regularisation collapses to the majority class; the chosen strength is the best on validation.
    assert result.l2 in grid and max(result.val_accuracies) > result.val_accuracies[0]
    refit = fit_logistic_regression(x[:300], y[:300], 4, result.l2)
    assert torch.allclose(result.model.weight, refit.weight, atol=1e-5)


# ------------------------------------------------------------------------------------------ VOC07 SVMs


def test_average_precision_hand_checked():
    # precision 1, .5, 2/3, .5 at recall .5, .5, 1, 1 -> 0.5 * 1 + 0.5 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # the monotone envelope lifts the first positive's precision from 1/2 to 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1])) == pytest.approx(2 / 3)


def multilabel_features(n, signal, seed):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, 20)) < 0.3, 1, -1)
    labels[rng.random((n, 20)) < 0.05] = 0  # a few "difficult-only" entries
    projection = np.random.default_rng(99).normal(size=(20, 64))
    features = signal * (labels == 1) @ projection + rng.normal(size=(n, 64))
    return features, labels


def test_svm_map_is_high_with_signal_and_chance_on_noise():
    costs = [0.01, 1.0]
    train_x, train_y = multilabel_features(240, 3.0, 0)
    test_x, test_y = multilabel_features(240, 3.0, 1)
    planted = svm_mean_ap(train_x, train_y, test_x, test_y, costs)
    assert planted["mAP"] > 0.97 and set(planted["cost"].values()) <= set(costs)
    noise_x, noise_test_x = multilabel_features(240, 0.0, 2)[0], multilabel_features(240, 0.0, 3)[0]
    noise = svm_mean_ap(noise_x, train_y, noise_test_x, test_y, costs)
    positive_rate = (test_y == 1).sum() / (test_y != 0).sum()
    assert abs(noise["mAP"] - positive_rate) < 0.12


def write_voc(root, classes_per_split):
    """A VOC-format folder: one object per image (class colour patch), plus a difficult person in some."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in classes_per_split.items():
        ids = []
        for c, name in enumerate(VOC_CLASSES):
            for i in range(per_class):
                image_id = f"{split}_{c:02d}_{i}"
                ids.append(image_id)
                pixels = rng.integers(0, 40, (36, 44, 3))
                pixels[:, :, c % 3] += 40 + 9 * c
                pixels[(c // 3) * 5:(c // 3) * 5 + 5] = 215
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
                objects = f"<object><name>{name}</name><difficult>0</difficult></object>"
                if i == 0 and name != "person":
                    objects += "<object><name>person</name><difficult>1</difficult></object>"
                (root / "Annotations" / f"{image_id}.xml").write_text(
                    f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture
def rgb_backbone(tmp_path):
    torch.manual_seed(0)
    cfg = BackboneConfig(name="small_convnet", width=4)
    backbone, _ = build_backbone(cfg, in_chans=3)
    for module in backbone.modules():  # He initialisation keeps random features at unit scale
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path / "backbone.safetensors"
    save_backbone(backbone, cfg, 3, path)
    return path


def test_voc07_end_to_end(tmp_path, rgb_backbone):
    root = tmp_path / "VOC2007"
    write_voc(root, {"trainval": 4, "test": 2})
    labels = read_labels(root, "trainval_03_0")
    assert labels[3] == 1 and labels[VOC_CLASSES.index("person")] == 0 and (labels == -1).sum() == 18
    output = tmp_path / "voc.json"
    args = ["--checkpoint", str(rgb_backbone), f"root={root}", "image_size=32", "costs=[0.1,10.0]",
            "device=cpu", "num_workers=0", f"output={output}"]
    assert voc07.main(args) == 0
    results = json.loads(output.read_text())["results"]
    assert set(results["ap"]) == set(VOC_CLASSES)
    assert 0.3 < results["mAP"] <= 1.0  # chance is about 1/20
    assert output.with_suffix(".png").stat().st_size > 0
    assert voc07.main(args) == 2  # refuses to overwrite


# ------------------------------------------------------------------------------------------ subsets


def test_stratified_fraction_and_name_lists(tmp_path):
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 3)
    chosen = stratified_fraction(labels, 0.1, seed=1)
    assert torch.bincount(labels[chosen]).tolist() == [10, 5, 1]
    assert torch.equal(chosen, stratified_fraction(labels, 0.1, seed=1))
    assert not torch.equal(chosen, stratified_fraction(labels, 0.1, seed=2))
    split = tmp_path / "1percent.txt"
    split.write_text("n01_2.JPEG\n\nn02_0.JPEG\n")
    assert simclr_subset_file(1, str(split)) == split
    names = read_subset_file(split)
    paths = ["/x/n01/n01_1.JPEG", "/x/n01/n01_2.JPEG", "/x/n02/n02_0.JPEG"]
    assert indices_of_names(paths, names).tolist() == [1, 2]
    with pytest.raises(ValueError, match="not in the dataset"):
        indices_of_names(paths[:2], names)
    with pytest.raises(FileNotFoundError, match="subset_file"):
        simclr_subset_file(1, str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="1% and 10%"):
        simclr_subset_file(5)


def write_image_folder(root, splits, classes=3, size=(40, 48)):
    """root/<split>/<wnid>/<wnid>_<i>.JPEG with a class-specific colour."""
    rng = np.random.default_rng(1)
    for split, count in splits.items():
        for c in range(classes):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (*size, 3))
                pixels[..., c] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"n0000000{c}_{i}.JPEG")


def test_semi_supervised_with_a_split_file(tmp_path, rgb_backbone):
    root = tmp_path / "imagenet_like"
    write_image_folder(root, {"train": 6, "val": 3})
    split = tmp_path / "1percent.txt"
    split.write_text("".join(f"n0000000{c}_{i}.JPEG\n" for c in range(3) for i in (0, 4)))
    common = ["--checkpoint", str(rgb_backbone), "data.name=image_folder", f"data.root={root}",
              "image_size=32", "augment.image_size=32", "epochs=3", "batch_size=4", "num_workers=0",
              "device=cpu"]
    assert semi_supervised.main([*common, "--subset-file", str(split), "--percent", "1"]) == 0
    record = json.loads((tmp_path / "eval_semi_supervised_1pct_image_folder.json").read_text())
    results = record["results"]
    assert results["num_labelled"] == 6 and results["subset"] == str(split)
    assert (results["classifier_lr"], results["encoder_lr"]) == (2.0, 0.0)
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    # 10%: the encoder is fine-tuned with its own learning rate; a stratified fraction for a non-ImageNet set.
    output = tmp_path / "ten.json"
    assert semi_supervised.main([*common, "percent=50", "classifier_lr=0.25", "encoder_lr=2.5e-4",
                                 f"output={output}"]) == 0
    assert json.loads(output.read_text())["results"]["num_labelled"] == 9
    assert semi_supervised.main([*common, "percent=50", f"output={tmp_path / 'x.json'}"]) == 2  # no paper lrs


def test_semi_supervised_fine_tunes_the_encoder_only_when_asked(tmp_path, rgb_backbone, monkeypatch):
    from common.backbones import load_backbone

    root = tmp_path / "folder"
    write_image_folder(root, {"train": 4, "val": 2})
    backbone, dim = load_backbone(rgb_backbone)
    monkeypatch.setattr(semi_supervised, "load_eval_backbone", lambda checkpoint: (backbone, dim, 3))
    cfg = semi_supervised.SemiSupervisedConfig(checkpoint=str(rgb_backbone), percent=1, epochs=1, batch_size=4,
                                               num_workers=0, device="cpu", image_size=32, split="stratified")
    cfg.data.name, cfg.data.root, cfg.augment.image_size = "image_folder", str(root), 32
    assert semi_supervised.learning_rates(cfg) == (2.0, 0.0)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    semi_supervised.fine_tune(cfg)
    # 1%: the encoder is frozen, BatchNorm statistics included.
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    cfg.percent, cfg.epochs = 10, 3  # the zero-initialised classifier passes gradient from the 2nd step on
    assert semi_supervised.learning_rates(cfg) == (0.25, 2.5e-4)
    semi_supervised.fine_tune(cfg)
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.endswith("weight") and "features.0." in k for k in changed)


# ------------------------------------------------------------------------------------------ transfer


def test_kornblith_transform_resizes_short_side_bicubic_and_crops():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 450, 3)).astype(np.uint8))
    out = transfer.kornblith_transform(224)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    grey = Image.fromarray(np.zeros((10, 20), dtype=np.uint8))
    assert transfer.kornblith_transform(8)(grey).shape == (3, 8, 8)


def test_transfer_probes_end_to_end(tmp_path, rgb_backbone):
    root = tmp_path / "folder"
    write_image_folder(root, {"train": 10, "val": 4})
    common = ["--checkpoint", str(rgb_backbone), f"data.root={root}", "image_size=32", "num_workers=0",
              "device=cpu"]
    assert transfer.main([*common, "dataset=image_folder", "l2_grid=[0.001,0.1,10.0]"]) == 0
    results = json.loads((tmp_path / "eval_transfer_image_folder.json").read_text())["results"]
    assert results["protocol"] == "lbfgs" and results["l2"] in (0.001, 0.1, 10.0)
    assert (results["num_train"], results["num_val"], results["num_test"]) == (24, 6, 12)
    assert results["top1"] > 0.6  # colour-coded classes, chance 1/3
    assert results["best_val_top1"] == max(results["val_top1_by_l2"].values())
    assert (tmp_path / "eval_transfer_image_folder.png").stat().st_size > 0
    assert transfer.main([*common, "dataset=places205", "sgd_epochs=3"]) == 0
    sgd = json.loads((tmp_path / "eval_transfer_places205.json").read_text())["results"]
    assert sgd["protocol"] == "sgd" and sgd["epochs"] == 3 and 0 <= sgd["top1"] <= sgd["top5"] <= 1
    assert transfer.main([*common, "dataset=dtd", f"root={tmp_path / 'none'}",
                          f"output={tmp_path / 'dtd.json'}"]) == 2  # missing files: a clear error


def test_evaluation_help_lists_every_protocol():
    done = subprocess.run([sys.executable, "-m", "evaluation", "--help"], capture_output=True, text=True,
                          check=True)
    for name in PROTOCOLS:
        assert name in done.stdout
    assert "evaluation.detection.convert" in done.stdout and "evaluation.detection.train" in done.stdout
