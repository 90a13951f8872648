"""Kornblith transfer probes: the L-BFGS fit against scikit-learn, the metrics, the data sets in their real
on-disk formats (Caltech-101, SUN397, CIFAR) or monkeypatched torchvision classes, and the command line."""

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from sklearn.linear_model import LogisticRegression

from common.errors import DataError
from evaluation import transfer, transfer_datasets
from evaluation.logistic import (
    LogisticModel,
    default_l2_grid,
    fit_logistic_regression,
    objective,
    select_and_refit,
    sklearn_C,
)
from evaluation.metrics import MEAN_PER_CLASS, TOP1, mean_per_class_accuracy, top1_accuracy
from evaluation.transfer_datasets import TRANSFER_DATASETS, SplitRequest, load_caltech101, load_sun397
from tests.chance import accuracy_beyond_chance
from tests.eval_data import colour_image, save_rgb_backbone, write_image_folder


@pytest.fixture
def rgb_backbone(tmp_path):
    return save_rgb_backbone(tmp_path)


# ------------------------------------------------------------------------------------------ L-BFGS probe


def logistic_problem(n=240, d=12, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(classes, d, generator=generator, dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = (x @ weights.T + 1.5 * torch.randn(n, classes, generator=generator, dtype=torch.float64)).argmax(1)
    return x, y


def objective_of(flat: torch.Tensor, x, y, l2, classes):
    d = x.shape[1]
    return objective(LogisticModel(flat[:classes * d].view(classes, d), flat[classes * d:]), x, y, l2)


@pytest.mark.parametrize("l2", [1e-3, 1e-1, 3.0])
def test_lbfgs_probe_matches_sklearn(l2):
    x, y = logistic_problem()
    classes, d = 4, x.shape[1]
    ours = fit_logistic_regression(x, y, classes, l2)
    reference = LogisticRegression(C=sklearn_C(l2, len(y)), tol=1e-10, max_iter=10000).fit(x.numpy(), y.numpy())
    flat_ours = torch.cat([ours.weight.flatten(), ours.bias])
    flat_theirs = torch.cat([torch.from_numpy(reference.coef_).flatten(), torch.from_numpy(reference.intercept_)])

    # The objective is unchanged by adding one constant to every intercept; outside that direction it is
    # strongly convex, with curvature mu >= the smallest eigenvalue of its Hessian there. Each solution is
    # then within |grad| / mu of the minimiser (all in float64), so the two are within the sum of those,
    # doubled for the curvature's change over that tiny distance.
    shift = torch.cat([torch.zeros(classes * d), torch.ones(classes)]).double() / classes ** 0.5
    project = torch.eye(len(shift), dtype=torch.float64) - torch.outer(shift, shift)

    def gradient_norm(flat):
        flat = flat.clone().requires_grad_()
        (grad,) = torch.autograd.grad(objective_of(flat, x, y, l2, classes), flat)
        return (project @ grad).norm()

    hessian = torch.autograd.functional.hessian(lambda f: objective_of(f, x, y, l2, classes), flat_ours)
    mu = torch.linalg.eigvalsh(project @ hessian @ project)[1]  # [0] is the zero of the shift direction
    bound = 2 * (gradient_norm(flat_ours) + gradient_norm(flat_theirs)) / mu
    difference = project @ (flat_ours - flat_theirs)
    assert difference.norm() <= bound
    # The predictions agree where no logit margin is within the logit change that difference allows.
    weight_change, bias_change = difference[:classes * d].view(classes, d), difference[classes * d:]
    change = weight_change.norm(dim=1).max() * x.norm(dim=1) + bias_change.abs().max()
    top_two = ours.logits(x).topk(2, dim=1).values
    assert ((top_two[:, 0] - top_two[:, 1]) > 2 * change).all()
    assert torch.equal(ours.predict(x), torch.from_numpy(reference.predict(x.numpy())))


def test_l2_selection_on_validation_then_refit(capsys):
    assert len(default_l2_grid()) == 45
    # np.logspace computes 10 ** endpoint in float64: within a few ulps, well inside approx's 1e-6
    assert default_l2_grid()[0] == pytest.approx(1e-5) and default_l2_grid()[-1] == pytest.approx(1e5)
    x, y = logistic_problem(n=400)
    grid = [1e-4, 1e-2, 1.0, 100.0]
    result = select_and_refit(x[:200], y[:200], x[200:300], y[200:300], 4, grid, progress=True)
    assert "L-BFGS path" in capsys.readouterr().err
    assert result.grid == sorted(grid, reverse=True) and len(result.val_scores) == 4
    # Huge regularisation collapses to the majority class; the chosen strength is the best on validation.
    assert result.l2 == result.grid[int(np.argmax(result.val_scores))]
    assert max(result.val_scores) > result.val_scores[0]
    refit = fit_logistic_regression(x[:300], y[:300], 4, result.l2)
    assert torch.equal(result.model.weight, refit.weight)  # the same fit on the same rows
    # The score is a parameter: the path's models scored by mean per-class accuracy.
    by_class = select_and_refit(x[:200], y[:200], x[200:300], y[200:300], 4, grid, score=mean_per_class_accuracy)
    model, expected = None, []
    for l2 in result.grid:  # strongest first, each fit warm-started from the previous one
        model = fit_logistic_regression(x[:200], y[:200], 4, l2, init=model)
        expected.append(mean_per_class_accuracy(model.predict(x[200:300]), y[200:300]))
    assert by_class.val_scores == expected


# ------------------------------------------------------------------------------------------ metrics


def test_mean_per_class_accuracy_on_a_planted_imbalanced_example():
    # class 0: 6 images, all right; class 1: 3 images, 1 right; class 2: 1 image, wrong
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    predictions = torch.tensor([0, 0, 0, 0, 0, 0, 1, 0, 2, 0])
    # Both sides in float64 and each a handful of operations: equal to within a few ulps.
    assert top1_accuracy(predictions, labels) == pytest.approx(7 / 10, rel=1e-15)
    assert mean_per_class_accuracy(predictions, labels) == pytest.approx((1 + 1 / 3 + 0) / 3, rel=1e-15)
    # equal class sizes: the two metrics coincide; a class absent from the labels does not count
    balanced = torch.tensor([0, 0, 1, 1])
    guesses = torch.tensor([0, 1, 1, 1])
    assert mean_per_class_accuracy(guesses, balanced) == top1_accuracy(guesses, balanced) == 0.75
    assert mean_per_class_accuracy(torch.tensor([5, 1]), torch.tensor([0, 1])) == 0.5
    with pytest.raises(ValueError, match="shape"):
        mean_per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0]))


# ------------------------------------------------------------------------------------------ data sets


KORNBLITH_METRICS = {"food101": TOP1, "cifar10": TOP1, "cifar100": TOP1, "sun397": TOP1, "stanford_cars": TOP1,
                     "dtd": TOP1, "fgvc_aircraft": MEAN_PER_CLASS, "oxford_pets": MEAN_PER_CLASS,
                     "caltech101": MEAN_PER_CLASS, "flowers102": MEAN_PER_CLASS}
# name: (torchvision class, splits asked for in order train, [validation,] test, extra keyword arguments)
TORCHVISION_SPLITS = {
    "food101": ("Food101", ["train", "test"], {}),
    "stanford_cars": ("StanfordCars", ["train", "test"], {}),
    "fgvc_aircraft": ("FGVCAircraft", ["train", "val", "test"], {"annotation_level": "variant"}),
    "dtd": ("DTD", ["train", "val", "test"], {"partition": 1}),
    "oxford_pets": ("OxfordIIITPet", ["trainval", "test"], {"target_types": "category"}),
    "flowers102": ("Flowers102", ["train", "val", "test"], {}),
}


def test_every_kornblith_data_set_torchvision_has_with_its_metric():
    assert {name: d.metric for name, d in TRANSFER_DATASETS.items()} == KORNBLITH_METRICS


TORCHVISION_CALLS = []  # (split, download, extra keyword arguments) of each FakeTorchvisionSplit


class FakeTorchvisionSplit(torch.utils.data.Dataset):
    """Stands in for a torchvision data set class: records how it was built; class-coded images, classes
    imbalanced in the test split (8, 3 and 1 images)."""

    def __init__(self, root, split, download, **extra):
        TORCHVISION_CALLS.append((split, download, extra))
        counts = [8, 3, 1] if split == "test" else [6, 6, 6]
        self.labels = [c for c, n in enumerate(counts) for _ in range(n)]
        rng = np.random.default_rng(len(TORCHVISION_CALLS))
        self.images = [colour_image(label, rng) for label in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


@pytest.mark.parametrize("name", sorted(TORCHVISION_SPLITS))
def test_torchvision_data_sets_are_asked_for_their_published_splits(name, monkeypatch):
    class_name, splits, extra = TORCHVISION_SPLITS[name]
    monkeypatch.setattr(tvd, class_name, FakeTorchvisionSplit)
    TORCHVISION_CALLS.clear()
    _, val, test = TRANSFER_DATASETS[name].load(SplitRequest("data", download=True))
    assert TORCHVISION_CALLS == [(split, True, extra) for split in splits]
    assert (val is None) == (len(splits) == 2) and len(test) == 12


def test_transfer_reports_mean_per_class_accuracy_with_the_validation_split(tmp_path, rgb_backbone, monkeypatch):
    monkeypatch.setattr(tvd, "Flowers102", FakeTorchvisionSplit)
    assert transfer.main(["--checkpoint", str(rgb_backbone), "dataset=flowers102", "image_size=32", "device=cpu",
                          "num_workers=0", "l2_grid=[0.001,0.1,10.0]", f"output={tmp_path / 'f.json'}"]) == 0
    results = json.loads((tmp_path / "f.json").read_text())["results"]
    assert results["metric"] == MEAN_PER_CLASS and (results["num_train"], results["num_val"]) == (18, 18)
    assert set(results["val_mean_per_class_accuracy_by_l2"]) == {"10.0", "0.1", "0.001"}
    by_l2 = results["val_mean_per_class_accuracy_by_l2"]
    assert results["best_val_mean_per_class_accuracy"] == max(by_l2.values())
    assert 0 <= results[MEAN_PER_CLASS] <= 1 and 0 <= results[TOP1] <= 1


def write_caltech101(root, counts):
    """root/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg: torchvision's layout after download."""
    rng = np.random.default_rng(2)
    folder = root / "caltech101" / "101_ObjectCategories"
    for label, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            colour_image(label, rng, size=(36, 44)).save(folder / name / f"image_{i + 1:04d}.jpg")


def test_caltech101_thirty_training_images_per_class_background_included(tmp_path, rgb_backbone):
    counts = {"BACKGROUND_Google": 33, "Faces": 31, "accordion": 35}
    write_caltech101(tmp_path, counts)
    train, val, test = load_caltech101(SplitRequest(str(tmp_path), download=False, split_seed=0))
    assert val is None and train.classes == sorted(counts) == list(counts)
    assert torch.bincount(train.targets).tolist() == [30, 30, 30]
    assert torch.bincount(test.targets).tolist() == [3, 1, 5]
    assert not set(train.files) & set(test.files) and len(train.files) + len(test.files) == 99
    assert load_caltech101(SplitRequest(str(tmp_path), False, 0))[0].files == train.files
    assert load_caltech101(SplitRequest(str(tmp_path), False, 1))[0].files != train.files
    with pytest.raises(DataError, match="Caltech-101 not found"):
        load_caltech101(SplitRequest(str(tmp_path / "none"), False))

    assert transfer.main(["--checkpoint", str(rgb_backbone), "dataset=caltech101", f"root={tmp_path}",
                          "image_size=32", "device=cpu", "num_workers=0", "l2_grid=[0.001,0.1,10.0]"]) == 0
    results = json.loads((tmp_path / "eval_transfer_caltech101.json").read_text())["results"]
    assert results["metric"] == MEAN_PER_CLASS and results["num_train"] + results["num_val"] == 90
    # 9 test images of 3 classes: guessing reaches this top-1 with probability < 1e-3 (binomial tail)
    assert results[TOP1] >= accuracy_beyond_chance(9, 3, 1e-3)


def write_sun397(root):
    """root/SUN397/ClassName.txt and <letter>/<class>/sun_*.jpg (torchvision's layout); returns the lines of
    a first partition: 3 training and 3 test images per class (a seventh image is in neither)."""
    folder = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop"]
    folder.mkdir(parents=True)
    (folder / "ClassName.txt").write_text("".join(c + "\n" for c in classes))
    rng = np.random.default_rng(3)
    listing = {"Training": [], "Testing": []}
    for label, name in enumerate(classes):
        (folder / name[1:]).mkdir(parents=True)
        for i in range(7):
            image = f"sun_{label}{i:02d}.jpg"
            colour_image(label, rng).save(folder / name[1:] / image)
            if i < 6:
                listing["Training" if i < 3 else "Testing"].append(f"{name}/{image}")
    return listing


def test_sun397_first_published_partition_and_its_download(tmp_path, monkeypatch):
    listing = write_sun397(tmp_path)
    with pytest.raises(DataError, match="Training_01.txt"):
        load_sun397(SplitRequest(str(tmp_path), download=False))
    archive = tmp_path / "published.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for kind, lines in listing.items():
            zipped.writestr(f"{kind}_01.txt", "\n".join(lines) + "\n")

    def download_url(url, folder, filename):
        assert url == transfer_datasets.SUN397_PARTITIONS_URL
        (tmp_path / "SUN397" / filename).write_bytes(archive.read_bytes())

    monkeypatch.setattr(transfer_datasets, "download_url", download_url)
    with pytest.raises(DataError, match="SHA-256"):
        load_sun397(SplitRequest(str(tmp_path), download=True))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(transfer_datasets, "SUN397_PARTITIONS_SHA256", digest)
    train, val, test = load_sun397(SplitRequest(str(tmp_path), download=True))
    assert val is None and train.targets.tolist() == [0, 0, 0, 1, 1, 1] == test.targets.tolist()
    assert [f"/{f.relative_to(tmp_path / 'SUN397').as_posix()}" for f in test.files] == listing["Testing"]
    assert train.classes == ["abbey", "bakery/shop"]


def write_cifar10(root, train_per_class, test_per_class, classes=3):
    """The python pickles of cifar-10-batches-py (data uint8 [N, 3072] as R, G, B planes; labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)

    def batch(per_class):
        labels = [c for c in range(classes) for _ in range(per_class)]
        planes = [np.asarray(colour_image(c, rng, size=(32, 32))).transpose(2, 0, 1).reshape(-1) for c in labels]
        return {"data": np.stack(planes).astype(np.uint8), "labels": labels}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(test_per_class if name == "test_batch" else train_per_class), f)


def test_cifar10_transfer_on_the_python_pickles(tmp_path, rgb_backbone):
    write_cifar10(tmp_path, train_per_class=2, test_per_class=4)
    assert transfer.main(["--checkpoint", str(rgb_backbone), "dataset=cifar10", f"root={tmp_path}",
                          "image_size=32", "device=cpu", "num_workers=0", "l2_grid=[0.001,0.1,10.0]"]) == 0
    results = json.loads((tmp_path / "eval_transfer_cifar10.json").read_text())["results"]
    assert results["metric"] == TOP1 and MEAN_PER_CLASS not in results
    assert (results["num_train"] + results["num_val"], results["num_test"]) == (30, 12)
    # 12 test images of 3 classes: guessing reaches this with probability < 1e-3 (binomial tail)
    assert results[TOP1] >= accuracy_beyond_chance(12, 3, 1e-3)


# ------------------------------------------------------------------------------------------ command line


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
    assert results["protocol"] == "lbfgs" and results["metric"] == TOP1 and results["l2"] in (0.001, 0.1, 10.0)
    assert (results["num_train"], results["num_val"], results["num_test"]) == (24, 6, 12)
    # 12 test images of 3 classes: guessing reaches this with probability < 1e-3 (binomial tail)
    assert results[TOP1] >= accuracy_beyond_chance(12, 3, 1e-3)
    assert results["best_val_top1"] == max(results["val_top1_by_l2"].values())
    assert (tmp_path / "eval_transfer_image_folder.png").stat().st_size > 0
    assert transfer.main([*common, "dataset=places205", "sgd_epochs=3"]) == 0
    sgd = json.loads((tmp_path / "eval_transfer_places205.json").read_text())["results"]
    assert sgd["protocol"] == "sgd" and sgd["epochs"] == 3 and 0 <= sgd["top1"] <= sgd["top5"] <= 1
    assert transfer.main([*common, "dataset=dtd", f"root={tmp_path / 'none'}",
                          f"output={tmp_path / 'dtd.json'}"]) == 2  # missing files: a clear error
    assert transfer.main([*common, "dataset=birdsnap", f"output={tmp_path / 'b.json'}"]) == 2
