"""The registry's errors, class-balanced subsets and multi-view seeding."""


import numpy as np
import pytest
import torch

from common.data import (
    DataConfig,
    InMemoryImageDataset,
    MultiViewDataset,
    build_dataset,
    dataset_info,
    stratified_subset,
)

# ---------------------------------------------------------------------------------------------- registry


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match=r"unknown dataset data.name='mnist' \(valid: cifar10, cifar100"):
        build_dataset(DataConfig(name="mnist"), "train")
    with pytest.raises(ValueError, match=r"unknown dataset"):
        dataset_info("mnist")
    with pytest.raises(ValueError, match="dataset 'cifar10' has no split 'unlabeled'"):
        build_dataset(DataConfig(name="cifar10"), "unlabeled")
    assert dataset_info("stl10").channels == 3 and dataset_info("fashion_mnist").channels == 1


# ---------------------------------------------------------------------------------------------- subsets


def test_stratified_subset_is_round_robin_over_classes():
    targets = [2, 0, 0, 1, 0, 2, 0, 0, 1, 0]  # class 0: 6 images, class 1: 2, class 2: 2
    assert stratified_subset(targets, 3) == [0, 1, 3]  # first image of each class
    assert stratified_subset(targets, 6) == [0, 1, 2, 3, 5, 8]  # two of each
    # Classes 1 and 2 run out; the rest of the budget goes to class 0, in file order.
    assert stratified_subset(targets, 8) == [0, 1, 2, 3, 4, 5, 6, 8]
    assert stratified_subset(torch.tensor(targets), 8) == stratified_subset(np.array(targets), 8)
    with pytest.raises(ValueError, match="data.subset=11"):
        stratified_subset(targets, 11)
    with pytest.raises(ValueError, match="data.subset=0"):
        stratified_subset(targets, 0)


# ---------------------------------------------------------------------------------------------- multi-view


def noisy_views(image):
    return image.float() + torch.rand(image.shape)


def test_multiview_seeding_is_per_sample_epoch_and_order_independent():
    base = InMemoryImageDataset(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.arange(5))
    ds = MultiViewDataset(base, [noisy_views, noisy_views], seed=3)
    forward = [ds[i] for i in range(5)]
    backward = {i: ds[i] for i in reversed(range(5))}
    for i, (views, label) in enumerate(forward):
        assert label == i and len(views) == 2
        assert all(torch.equal(a, b) for a, b in zip(views, backward[i][0]))
        assert not torch.equal(views[0], views[1])  # each view draws its own randomness
    assert not torch.equal(forward[0][0][0], forward[1][0][0])

    other_seed = MultiViewDataset(base, [noisy_views], seed=4)
    assert not torch.equal(other_seed[0][0][0], forward[0][0][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0][0], forward[0][0][0])
    ds.set_epoch(0)
    assert torch.equal(ds[0][0][0], forward[0][0][0])


def test_multiview_leaves_the_global_rng_alone_and_works_with_workers():
    base = InMemoryImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
    ds = MultiViewDataset(base, [noisy_views], seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ds[0]
    assert torch.equal(torch.rand(3), expected)

    in_process = torch.cat([b[0][0] for b in torch.utils.data.DataLoader(ds, batch_size=2)])
    with_workers = torch.cat([b[0][0] for b in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)])
    assert torch.equal(in_process, with_workers)
