"""Pascal VOC 2007 classification with linear SVMs on frozen features (Goyal et al., 2019 benchmark).

Protocol: L2-normalised features of ``trainval`` and ``test`` images; for each of the 20 classes a
one-vs-rest ``LinearSVC`` (squared hinge, L2 penalty, positive class weight 2) per cost; the cost with
the best mean average precision in 3-fold cross-validation on trainval is refitted on all of trainval
and scored on test. The result is the mean over classes of the test AP.

Labels per image and class, as in the VOC devkit's ``<class>_<split>.txt``: 1 when a non-difficult object
of the class is present, 0 when only "difficult" ones are, -1 when absent. Training treats 0 as negative;
the test AP ignores images labelled 0 for that class. AP is the area under the precision-recall curve
with precision made monotone (the all-points VOC AP).

Cross-validation scores each held-out fold with that same AP, difficult images ignored as in the test.
The benchmark code (Goyal et al.'s ``train_svm_kfold.py``, VISSL's ``SVMTrainer``) instead scores the folds
with scikit-learn's ``average_precision`` (no monotone envelope, difficult images counted as negatives),
so it can choose a different cost than the test metric would.

Features and image handling, two settings (``feature``, ``resize``):

- ours (the default, ``feature=pooled resize=center_crop``): the backbone's own output (global average
  pooling: 2048 dimensions for a ResNet-50), images resized on the short side to ``image_size / 0.875``
  (256 for 224) and centre-cropped to ``image_size`` (``common.augment``'s evaluation transform). Any
  backbone works.
- the benchmark's (``feature=res5_6x6 resize=goyal``), Goyal et al. 2019 as VISSL's
  ``eval_resnet_8gpu_transfer_voc07_svm`` config runs it: images resized (bilinear) on the short side to
  256, then to ``image_size`` x ``image_size`` (224 x 224: the whole image, aspect ratio not kept, no
  crop); the feature is res5 averaged over 6 x 6 windows with stride 1, 2048 x 2 x 2 = 8192 dimensions for
  a ResNet-50 at 224 px (``evaluation.feature_maps``). Their cost grid is ``default_costs``.

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
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.augment import build_eval_transform
from common.config_types import NonNegativeInt, PositiveInt, Range
from common.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from common.errors import ConfigError, DataError
from common.plots import new_figure, save_figure
from evaluation.cli import load_eval_backbone, resolve_device, run_protocol
from evaluation.feature_maps import Res5AvgPool6
from evaluation.features import extract_features
from evaluation.progress import progress_bar

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def default_costs() -> list[float]:
    """Goyal et al.'s costs: 1e-7 ... 1e2 (powers of ten) and 0.5^k for k = 4 ... 19."""
    return [10.0 ** e for e in range(-7, 3)] + [0.5 ** k for k in range(4, 20)]


def read_image_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path} not found: expected a VOC-format folder (ImageSets/Main/{split}.txt)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_labels(root: Path, image_id: str) -> np.ndarray:
    """[20] in {1 present, 0 only difficult, -1 absent} from ``Annotations/<id>.xml``."""
    path = root / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise DataError(f"annotation {path} not found")
    labels = np.full(len(VOC_CLASSES), -1, dtype=np.int64)
    for obj in ET.parse(path).getroot().iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{path}: unknown VOC class '{name}'")
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
            raise DataError(f"split '{split}' of {self.root} lists no images")
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


def class_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """The VOC AP of one class from labels in {1, 0, -1}: images labelled 0 (only difficult) are ignored."""
    evaluated = labels != 0
    return average_precision(scores[evaluated], labels[evaluated] == 1)


def cross_validated_ap(cost: float, x: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    """Mean over ``folds`` unshuffled stratified folds of the held-out ``class_ap`` (the test score) of an SVM
    trained on the other folds with difficult images as negatives."""
    y = np.where(labels == 1, 1, -1)
    splitter = StratifiedKFold(n_splits=folds)  # unshuffled, as scikit-learn's cross_val_score(cv=3)
    scores = []
    for train, held_out in splitter.split(x, y):
        model = _fit(cost, x[train], y[train], seed)
        scores.append(class_ap(model.decision_function(x[held_out]), labels[held_out]))
    return float(np.mean(scores))


def l2_normalize(features: np.ndarray) -> np.ndarray:
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def svm_mean_ap(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
                costs: Sequence[float] | None = None, folds: int = 3, seed: int = 0,
                class_names: Sequence[str] = VOC_CLASSES, progress: bool = False) -> dict:
    """Per-class SVMs with the cost chosen by cross-validated AP; test mAP (see the module docstring).

    ``progress`` shows a bar of the (class, cost) cross-validations.
    """
    costs = list(costs) if costs is not None else default_costs()
    train_x, test_x = l2_normalize(np.asarray(train_x, np.float64)), l2_normalize(np.asarray(test_x, np.float64))
    per_class, chosen = {}, {}
    bar = progress_bar(total=len(class_names) * len(costs), desc="VOC07 SVMs", enabled=progress)
    for c, name in enumerate(class_names):
        labels = train_labels[:, c]
        if (labels == 1).sum() < folds:
            raise DataError(f"class '{name}' has {(labels == 1).sum()} positive training images; "
                             f"{folds}-fold cross-validation needs at least {folds}")
        cv_ap = []
        for cost in costs:
            cv_ap.append(cross_validated_ap(cost, train_x, labels, folds, seed))
            bar.update(1)
        chosen[name] = costs[int(np.argmax(cv_ap))]
        model = _fit(chosen[name], train_x, np.where(labels == 1, 1, -1), seed)
        per_class[name] = class_ap(model.decision_function(test_x), test_labels[:, c])
    bar.close()
    return {"mAP": float(np.mean(list(per_class.values()))), "ap": per_class, "cost": chosen}


@dataclass
class VOC07Config:
    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    root: str = "data/VOCdevkit/VOC2007"  # the VOC2007 folder (Annotations, ImageSets, JPEGImages)
    train_split: str = "trainval"  # the SVMs' training images (ImageSets/Main/<split>.txt)
    test_split: str = "test"  # the images of the reported mAP
    image_size: PositiveInt = 224  # input side (see resize)
    # center_crop: short side to image_size/0.875, centre crop | goyal: short side to 256, then squashed to
    # image_size x image_size (Goyal et al.)
    resize: Literal["center_crop", "goyal"] = "center_crop"
    # pooled: the backbone's output | res5_6x6: last map, 6x6 stride-1 average pooling, flattened (Goyal et al.;
    # 8192-d for ResNet-50 at 224)
    feature: Literal["pooled", "res5_6x6"] = "pooled"
    costs: list[float] | None = None  # None: Goyal et al.'s 26 costs
    folds: Annotated[int, Range(low=2)] = 3  # cross-validation folds that choose each class's cost
    batch_size: PositiveInt = 256  # feature extraction batch
    num_workers: NonNegativeInt = 8  # DataLoader worker processes (0: load in this process)
    seed: int = 0  # the cross-validation folds and the SVMs' solver
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True        # tqdm bars for the extraction and the SVMs (like the trainer's)


GOYAL_SHORT_SIDE = 256


def voc07_transform(resize: str, image_size: int, in_chans: int) -> v2.Compose:
    """The image handling ``resize`` names (module docstring), to normalised float tensors."""
    if resize == "center_crop":
        return build_eval_transform(DatasetInfo(3, 224, len(VOC_CLASSES), IMAGENET_MEAN, IMAGENET_STD), in_chans,
                                    image_size)
    if resize == "goyal":
        if in_chans != 3:
            raise ConfigError(f"resize=goyal feeds RGB images; the backbone takes {in_chans} channels")
        return v2.Compose([v2.ToImage(), v2.Resize(GOYAL_SHORT_SIDE, antialias=True),
                           v2.Resize((image_size, image_size), antialias=True),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    raise ConfigError(f"resize must be center_crop or goyal, not '{resize}'")


def evaluate_voc07(cfg: VOC07Config) -> dict:
    device = resolve_device(cfg.device)
    backbone, _, in_chans = load_eval_backbone(cfg.checkpoint)
    transform = voc07_transform(cfg.resize, cfg.image_size, in_chans)
    encoder = Res5AvgPool6(backbone) if cfg.feature == "res5_6x6" else backbone
    encoder.to(device)
    splits = [VOCClassification(cfg.root, split) for split in (cfg.train_split, cfg.test_split)]
    features = [extract_features(encoder, s, transform, cfg.batch_size, device, cfg.num_workers,
                                 progress=cfg.progress_bar)[0].numpy() for s in splits]
    results = svm_mean_ap(features[0], splits[0].labels, features[1], splits[1].labels, cfg.costs, cfg.folds,
                          cfg.seed, progress=cfg.progress_bar)
    return {**results, "feature_dim": features[0].shape[1]}


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
