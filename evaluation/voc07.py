"""Pascal VOC 2007 classification with linear SVMs on frozen features (Goyal et al., 2019 benchmark).

Protocol: L2-normalised features of ``trainval`` and ``test`` images; for each of the 20 classes a
one-vs-rest ``LinearSVC`` (squared hinge, L2 penalty, positive class weight 2) per cost; the cost with
the best mean average precision in 3-fold cross-validation on trainval is refitted on all of trainval
and scored on test. The result is the mean over classes of the test AP.

Labels per image and class, as in the VOC devkit's ``<class>_<split>.txt``: 1 when a non-difficult object
of the class is present, 0 when only "difficult" ones are, -1 when absent. Training treats 0 as negative;
the test AP ignores images labelled 0 for that class. AP is the area under the precision-recall curve
with precision made monotone (the all-points VOC AP).

VOC-format folder: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (``<object><name>``,
``<difficult>``), ``ImageSets/Main/<split>.txt`` (one id per line).

Command line: ``python -m evaluation.voc07 --checkpoint PATH root=/data/VOCdevkit/VOC2007``.
"""

from __future__ import annotations

import sys
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from torch.utils.data import Dataset

from common.augment import build_eval_transform
from common.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from common.plots import new_figure, save_figure
from evaluation.cli import load_eval_backbone, resolve_device, run_protocol
from evaluation.features import extract_features

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def default_costs() -> list[float]:
    """Goyal et al.'s costs: 1e-7 ... 1e2 (powers of ten) and 0.5^k for k = 4 ... 19."""
    return [10.0 ** e for e in range(-7, 3)] + [0.5 ** k for k in range(4, 20)]


def read_image_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a VOC-format folder (ImageSets/Main/{split}.txt)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_labels(root: Path, image_id: str) -> np.ndarray:
    """[20] in {1 present, 0 only difficult, -1 absent} from ``Annotations/<id>.xml``."""
    path = root / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} not found")
    labels = np.full(len(VOC_CLASSES), -1, dtype=np.int64)
    for obj in ET.parse(path).getroot().iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: unknown VOC class '{name}'")
        c = VOC_CLASSES.index(name)
        difficult = obj.findtext("difficult", "0").strip() == "1"
        labels[c] = max(labels[c], 0 if difficult else 1)
    return labels


class VOCClassification(Dataset):
    """``(RGB image, index)`` of a VOC split; ``labels`` [N, 20] holds the per-class labels."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.ids = read_image_ids(self.root, split)
        if not self.ids:
            raise ValueError(f"split '{split}' of {self.root} lists no images")
        self.labels = np.stack([read_labels(self.root, i) for i in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        path = self.root / "JPEGImages" / f"{self.ids[index]}.jpg"
        with Image.open(path) as image:
            return image.convert("RGB"), index


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve with monotone (non-increasing) precision."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        raise ValueError("average precision needs at least one positive example")
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / hits.sum()
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float((recall_steps * envelope).sum())


def _svm(cost: float, seed: int) -> LinearSVC:
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge", dual=True,
                     tol=1e-4, max_iter=2000, random_state=seed)


def _fit(cost: float, x: np.ndarray, y: np.ndarray, seed: int) -> LinearSVC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny costs stop at max_iter, as in the reference
        return _svm(cost, seed).fit(x, y)


def cross_validated_ap(cost: float, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    splitter = StratifiedKFold(n_splits=folds)  # unshuffled, as scikit-learn's cross_val_score(cv=3)
    scores = []
    for train, held_out in splitter.split(x, y):
        model = _fit(cost, x[train], y[train], seed)
        scores.append(average_precision(model.decision_function(x[held_out]), y[held_out] == 1))
    return float(np.mean(scores))


def l2_normalize(features: np.ndarray) -> np.ndarray:
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def svm_mean_ap(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
                costs: Sequence[float] | None = None, folds: int = 3, seed: int = 0,
                class_names: Sequence[str] = VOC_CLASSES) -> dict:
    """Per-class SVMs with the cost chosen by cross-validated AP; test mAP (see the module docstring)."""
    costs = list(costs) if costs is not None else default_costs()
    train_x, test_x = l2_normalize(np.asarray(train_x, np.float64)), l2_normalize(np.asarray(test_x, np.float64))
    per_class, chosen = {}, {}
    for c, name in enumerate(class_names):
        y = np.where(train_labels[:, c] == 1, 1, -1)
        if (y == 1).sum() < folds:
            raise ValueError(f"class '{name}' has {(y == 1).sum()} positive training images; "
                             f"{folds}-fold cross-validation needs at least {folds}")
        cv_ap = [cross_validated_ap(cost, train_x, y, folds, seed) for cost in costs]
        chosen[name] = costs[int(np.argmax(cv_ap))]
        model = _fit(chosen[name], train_x, y, seed)
        evaluated = test_labels[:, c] != 0
        per_class[name] = average_precision(model.decision_function(test_x[evaluated]),
                                            test_labels[evaluated, c] == 1)
    return {"mAP": float(np.mean(list(per_class.values()))), "ap": per_class, "cost": chosen}


@dataclass
class VOC07Config:
    checkpoint: str = "???"
    root: str = "data/VOCdevkit/VOC2007"
    train_split: str = "trainval"
    test_split: str = "test"
    image_size: int = 224            # resize the short side to image_size / 0.875, centre crop
    costs: list[float] | None = None  # None: Goyal et al.'s 26 costs
    folds: int = 3
    batch_size: int = 256
    num_workers: int = 8
    seed: int = 0
    device: str = "auto"
    output: str | None = None
    overwrite: bool = False


def evaluate_voc07(cfg: VOC07Config) -> dict:
    device = resolve_device(cfg.device)
    backbone, _, in_chans = load_eval_backbone(cfg.checkpoint)
    backbone.to(device)
    transform = build_eval_transform(DatasetInfo(3, 224, len(VOC_CLASSES), IMAGENET_MEAN, IMAGENET_STD), in_chans,
                                     cfg.image_size)
    splits = [VOCClassification(cfg.root, split) for split in (cfg.train_split, cfg.test_split)]
    features = [extract_features(backbone, s, transform, cfg.batch_size, device, cfg.num_workers)[0].numpy()
                for s in splits]
    return svm_mean_ap(features[0], splits[0].labels, features[1], splits[1].labels, cfg.costs, cfg.folds, cfg.seed)


def plot_class_ap(results: dict, path: Path) -> None:
    """Test AP of each class as horizontal bars, the mean AP as a line."""
    names = list(results["ap"])
    figure, axis = new_figure(figsize=(5, 0.22 * len(names) + 1.2))
    axis.barh(names, [results["ap"][n] for n in names])
    axis.axvline(results["mAP"], color="tab:red", linestyle="--", label=f"mAP {results['mAP']:.3f}")
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("test AP (linear SVM)")
    axis.legend(loc="lower right")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    return run_protocol(VOC07Config, evaluate_voc07, argv, protocol="voc07_svm", plot=plot_class_ap)


if __name__ == "__main__":
    sys.exit(main())
