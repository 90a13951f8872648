"""The CIFAR ResNet-32 of He et al. (2016, Section 4.2), the long-tail backbone (backbone.name=resnet32)."""

import pytest
import torch
from torch import nn

from common.backbones import BackboneConfig, build_backbone
from common.cifar_resnet import BasicBlock, resnet32
from common.errors import ConfigError
from vcreg import apply_vcreg


def test_resnet32_has_he_et_al_layout_and_parameter_count():
    model = resnet32(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 32  # 6n + 2 with n = 5: 31 convolutions and the classifier
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [5, 5, 5]
    # Every weighted layer of He et al.'s layout, counted by hand: the 3x3 stem (3 -> 16) with its BN; stage 1:
    # 10 convs 16 -> 16; stage 2: one 16 -> 32 and nine 32 -> 32; stage 3: one 32 -> 64 and nine 64 -> 64;
    # a BN (2 parameters per channel) after each convolution; option-A shortcuts hold nothing; fc 64 -> 10.
    conv = 9 * (3 * 16 + 10 * 16 * 16 + 16 * 32 + 9 * 32 * 32 + 32 * 64 + 9 * 64 * 64)
    norm = 2 * (16 + 10 * 16 + 10 * 32 + 10 * 64)
    expected = conv + norm + 64 * 10 + 10
    assert expected == 464_154  # "0.46M" in He et al.'s Table 6
    assert sum(p.numel() for p in model.parameters()) == expected
    # 32 x 32 maps in stage 1, 16 x 16 in stage 2, 8 x 8 in stage 3
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    zeros = torch.zeros(2, 8, 4, 4)
    assert torch.equal(block.shortcut(x), torch.cat([zeros, x[:, :, ::2, ::2], zeros], dim=1))
    assert torch.equal(BasicBlock(16, 16, stride=1).shortcut(x), x)


def test_resnet32_in_the_backbone_registry_and_with_vcreg():
    backbone, dim = build_backbone(BackboneConfig(name="resnet32"), in_chans=3)
    assert dim == 64 and backbone(torch.randn(4, 3, 32, 32)).shape == (4, 64)
    grey, _ = build_backbone(BackboneConfig(name="resnet32"), in_chans=1)
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 64)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_backbone(BackboneConfig(name="resnet32", pretrained=True))
    x = torch.randn(4, 3, 32, 32)
    backbone.eval()
    reference = backbone(x)
    assert len(apply_vcreg(backbone, "blocks", alpha=1.0, beta=1.0)) == 15
    assert torch.equal(backbone(x), reference)  # VCReg layers are the identity in the forward pass
    with pytest.raises(ValueError, match="downsamples inside its blocks"):  # no downsampling layer of its own
        apply_vcreg(resnet32(), "downsample", alpha=1.0, beta=1.0)
