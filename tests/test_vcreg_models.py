"""CIFAR ResNet-32 and the long-tailed CIFAR subsets."""

import pytest
import torch

from vcreg import apply_vcreg
from vcreg.cifar_resnet import resnet32
from vcreg.longtail import longtail_counts, longtail_indices


def test_resnet32_shape_depth_and_vcreg_placement():
    model = resnet32(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 32  # 31 convolutions + the classifier
    # He et al. quote 0.46M, rounded to two figures: within half a unit of the last figure (rel 0.011)
    assert abs(sum(p.numel() for p in model.parameters()) - 0.46e6) <= 0.005e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    backbone = resnet32()
    x = torch.randn(4, 3, 32, 32)
    reference = backbone(x)
    assert reference.shape == (4, 64)
    assert len(apply_vcreg(backbone, "blocks", alpha=1.0, beta=1.0)) == 15
    assert torch.equal(backbone(x), reference)
    with pytest.raises(ValueError, match="downsamples inside its blocks"):  # no downsampling layer of its own
        apply_vcreg(resnet32(), "downsample", alpha=1.0, beta=1.0)


def test_longtail_counts_match_cifar_lt():
    counts = longtail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[-1] == 50 and sum(counts) == 12406  # CIFAR-10-LT, Cao et al.
    counts = longtail_counts(500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5 and sum(counts) == 10847  # CIFAR-100-LT
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_counts(500, 10, 0.5)


def test_longtail_indices_keep_first_images_of_each_class():
    targets = torch.tensor([0, 1, 2] * 10)  # 10 images per class, interleaved
    indices = longtail_indices(targets, imbalance_ratio=10)
    kept = targets[indices]
    assert [(kept == c).sum().item() for c in range(3)] == longtail_counts(10, 3, 10) == [10, 3, 1]
    assert indices[kept == 1].tolist() == [1, 4, 7]  # the first three images of class 1, in file order
