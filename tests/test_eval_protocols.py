"""VOC07 SVMs (ours and Goyal et al.'s feature), semi-supervised subsets, each end to end on disk."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from common.backbones import BackboneConfig, build_backbone
from common.errors import DataError
from evaluation import semi_supervised, voc07
from evaluation.__main__ import PROTOCOLS
from evaluation.feature_maps import Res5AvgPool6, last_feature_map
from evaluation.splits import indices_of_names, read_subset_file, simclr_subset_file, stratified_fraction
from evaluation.voc07 import (
    VOC_CLASSES,
    VOCClassification,
    average_precision,
    class_ap,
    cross_validated_ap,
    read_labels,
    svm_mean_ap,
    voc07_transform,
)
from tests.eval_data import save_rgb_backbone, write_image_folder

# ------------------------------------------------------------------------------------------ VOC07 SVMs


def test_average_precision_hand_checked():
    # float64 and a handful of roundings of 2^-53 each on both sides: rel=1e-15 holds them.
    # precision 1, .5, 2/3, .5 at recall .5, .5, 1, 1 -> 0.5 * 1 + 0.5 * 2/3
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx(5 / 6, rel=1e-15)
    # the monotone envelope lifts the first positive's precision from 1/2 to 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1])) == pytest.approx(2 / 3, rel=1e-15)


def test_class_ap_ignores_difficult_images():
    # labels 1, 0 (difficult only), -1, 1: without the difficult image precision is 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3; counting it as a negative would give 1/2 * 1 + 1/2 * 1/2.
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, -1, 1])
    assert class_ap(scores, labels) == pytest.approx(5 / 6, rel=1e-15)
    assert average_precision(scores, labels == 1) == pytest.approx(3 / 4, rel=1e-15)


class ScoreByFirstFeature:
    """An SVM stand-in whose decision value is the first feature."""

    def decision_function(self, x):
        return x[:, 0]


def test_cross_validation_scores_folds_with_the_test_ap(monkeypatch):
    # Difficult images score highest, positives next, negatives last: every held-out fold has AP 1 once
    # difficult images are ignored (as in the test), and below 1 if they counted as negatives.
    monkeypatch.setattr(voc07, "_fit", lambda cost, x, y, seed: ScoreByFirstFeature())
    labels = np.array([1, 1, 1, 0, 0, 0, -1, -1, -1, -1, -1, -1])
    x = np.where(labels == 0, 3.0, np.where(labels == 1, 2.0, 1.0))[:, None] + np.linspace(0, 0.1, 12)[:, None]
    assert cross_validated_ap(1.0, x, labels, folds=3, seed=0) == pytest.approx(1.0, rel=1e-15)
    assert average_precision(x[:, 0], labels == 1) < 1  # what counting them as negatives does


def random_ranking_maps(labels, draws=1000, seed=0):
    """mAPs of rankings drawn uniformly at random. Scores that do not depend on the test labels (an SVM
    trained on other data, applied to test features independent of the labels) rank the test images
    uniformly at random, so this is the exact null distribution of the test mAP: an observed mAP is above
    the largest of 1000 such draws with probability 1/1001, or outside [min, max] with 2/1001, by chance."""
    rng = np.random.default_rng(seed)
    return np.array([np.mean([class_ap(rng.random(len(labels)), labels[:, c]) for c in range(labels.shape[1])])
                     for _ in range(draws)])


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
    null = random_ranking_maps(test_y)
    planted = svm_mean_ap(train_x, train_y, test_x, test_y, costs)
    assert planted["mAP"] > null.max() and set(planted["cost"].values()) <= set(costs)
    noise_x, noise_test_x = multilabel_features(240, 0.0, 2)[0], multilabel_features(240, 0.0, 3)[0]
    noise = svm_mean_ap(noise_x, train_y, noise_test_x, test_y, costs)
    assert null.min() <= noise["mAP"] <= null.max()


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
    return save_rgb_backbone(tmp_path)


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
    assert set(results["ap"]) == set(VOC_CLASSES) and results["feature_dim"] == 32
    assert results["mAP"] > random_ranking_maps(VOCClassification(root, "test").labels).max()
    assert output.with_suffix(".png").stat().st_size > 0
    assert voc07.main(args) == 2  # refuses to overwrite
    # Goyal et al.'s setting: squashed to 56 x 56, the small convnet's 7 x 7 map pooled 6 x 6 with stride 1
    goyal = tmp_path / "goyal.json"
    assert voc07.main([*args[:-1], f"output={goyal}", "image_size=56", "resize=goyal", "feature=res5_6x6",
                       "costs=[1.0]", "progress_bar=false"]) == 0
    assert json.loads(goyal.read_text())["results"]["feature_dim"] == 32 * 2 * 2
    assert voc07.main([*args[:-1], f"output={goyal}", "overwrite=true", "feature=res5"]) == 2


def test_goyal_res5_feature_geometry():
    # A ResNet-50 at 224 px: res5 is 2048 x 7 x 7, 6 x 6 windows at stride 1 sit at 2 x 2 places: 8192-d.
    backbone = torchvision.models.resnet50()
    backbone.fc = torch.nn.Identity()
    backbone.eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feature_map = last_feature_map(backbone)(images)
        pooled, goyal = backbone(images), Res5AvgPool6(backbone)(images)
    assert feature_map.shape == (1, 2048, 7, 7) and goyal.shape == (1, 8192)
    # The window means, and the global mean that the backbone's own pooling takes, from the float64 map:
    # float32 sums of 36 or 49 terms are within n * 2^-24 of that relative to the largest term.
    reference = feature_map.double()
    windows = torch.stack([reference[..., i:i + 6, j:j + 6].mean((-2, -1)) for i in (0, 1) for j in (0, 1)], -1)
    largest = reference.abs().max()
    assert ((goyal.double() - windows.flatten(1)).abs() <= 36 * 2.0 ** -24 * largest).all()
    assert ((pooled.double() - reference.mean((-2, -1))).abs() <= 49 * 2.0 ** -24 * largest).all()
    assert not Res5AvgPool6(backbone).training  # the wrapper keeps the backbone's mode
    small, _ = build_backbone(BackboneConfig(name="small_convnet", width=4), in_chans=3)
    with pytest.raises(ValueError, match="smaller than the 6 x 6 window"):
        Res5AvgPool6(small)(torch.zeros(1, 3, 32, 32))


def test_goyal_resize_squashes_the_whole_image():
    # A wide image, red in its left tenth: the benchmark squashes it to 224 x 224, so the left column
    # stays red; our centre crop cuts the left side away, so its left column is blue.
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, :30, 0], pixels[:, 30:, 2] = 255, 255
    image = Image.fromarray(pixels)
    squashed, cropped = voc07_transform("goyal", 224, 3)(image), voc07_transform("center_crop", 224, 3)(image)
    assert squashed.shape == cropped.shape == (3, 224, 224)
    assert (squashed[0, :, 0] > squashed[2, :, 0]).all() and (cropped[0, :, 0] < cropped[2, :, 0]).all()
    with pytest.raises(ValueError, match="center_crop or goyal"):
        voc07_transform("vissl", 224, 3)


def test_svm_progress_bar(capsys):
    train_x, train_y = multilabel_features(30, 3.0, 0)
    svm_mean_ap(train_x, train_y, train_x, train_y, [1.0], class_names=VOC_CLASSES[:2], progress=True)
    assert "VOC07 SVMs" in capsys.readouterr().err


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
    with pytest.raises(DataError, match="subset_file"):
        simclr_subset_file(1, str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="1% and 10%"):
        simclr_subset_file(5)


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


def test_evaluation_help_lists_every_protocol():
    done = subprocess.run([sys.executable, "-m", "evaluation", "--help"], capture_output=True, text=True,
                          check=True)
    for name in PROTOCOLS:
        assert name in done.stdout
    assert "evaluation.detection.convert" in done.stdout and "evaluation.detection.train" in done.stdout
