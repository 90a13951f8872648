"""Frozen features of a labelled data set's train and test splits: what k-NN, the linear probe and a method's
own end-of-run figures read."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.augment import build_eval_transform
from common.data import DataConfig, build_dataset, dataset_info, hand_over_skips, stratified_subset
from common.errors import DataError
from common.method import FeatureSplits
from evaluation.features import extract_features


class _CastInputs(nn.Module):
    """The backbone as the evaluation calls it: images cast to its weights' dtype (a float64 run)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.dtype = next(backbone.parameters()).dtype

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images.to(self.dtype))


def check_classes(targets, dataset: str) -> None:
    """A labelled evaluation's training labels name at least 2 classes: with one, every vote and every
    classifier is right, and top-1 is 1.0 whatever the features. Unlabelled images (-1) are left to the caller,
    whose message says what to do with them."""
    labels = torch.as_tensor(targets)
    classes = labels.unique().tolist()
    if bool((labels >= 0).all()) and len(classes) < 2:
        raise DataError(f"dataset '{dataset}' has {len(classes)} class {classes} in its training images: a labelled "
                        "evaluation needs at least 2 (with one, top-1 is 1.0 whatever the features)")


def train_test_features(backbone: nn.Module, data: DataConfig, in_chans: int | None, image_size: int | None,
                        batch_size: int, max_train_images: int | None, device: torch.device,
                        progress: bool = False, max_test_images: int | None = None) -> FeatureSplits:
    """Frozen features of ``data``'s train split (``max_train_images`` of it, stratified, if set) and test
    split (``max_test_images`` of it, stratified, if set), through the dataset's evaluation transform; every image
    must be labelled."""
    info = dataset_info(data)
    transform = build_eval_transform(info, in_chans or info.channels, image_size)
    train_set, test_set = build_dataset(data, "train"), build_dataset(data, "test")
    check_classes(train_set.targets, data.name)
    indices = None
    if max_train_images is not None and max_train_images < len(train_set):
        indices = torch.tensor(stratified_subset(train_set.targets, max_train_images))
    model = _CastInputs(backbone)
    train_x, train_y = extract_features(model, train_set, transform, batch_size, device, data.num_workers, indices,
                                        progress)
    test_indices = None
    if max_test_images is not None and max_test_images < len(test_set):
        test_indices = torch.tensor(stratified_subset(test_set.targets, max_test_images))
    test_x, test_y = extract_features(model, test_set, transform, batch_size, device, data.num_workers, test_indices,
                                      progress=progress)
    for dataset in (train_set, test_set):  # a trainer counts the corrupt images its evaluation skipped too
        hand_over_skips(dataset)
    if (train_y < 0).any() or (test_y < 0).any():
        raise DataError(f"dataset '{data.name}' has unlabelled train or test images: the evaluation needs labels "
                        "(set eval.knn_at_init=false and eval.linear=false, and evaluate with python -m evaluation "
                        "on a labelled dataset)")
    return FeatureSplits(train_x, train_y, test_x, test_y)
