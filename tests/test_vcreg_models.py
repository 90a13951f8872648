"""The CIFAR ResNet-32 of He et al. (2016, Section 4.2), the long-tail backbone (backbone.name=resnet32)."""

import pytest
import torch
from torch import nn

from common.backbones import BackboneConfig, build_backbone, load_backbone, save_backbone
from common.cifar_resnet import BasicBlock, CifarResNet, resnet32
from common.errors import ConfigError, RunFolderError
from evaluation.detection.convert import convert_checkpoint
from vcreg import apply_vcreg
from vcreg.placement import VCRegLayerConfig


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
    assert len(apply_vcreg(backbone, VCRegLayerConfig(placement="blocks", alpha=1.0, beta=1.0, mean_removal=False))) == 15
    assert torch.equal(backbone(x), reference)  # VCReg layers are the identity in the forward pass
    with pytest.raises(ValueError, match="downsamples inside its blocks"):  # no downsampling layer of its own
        apply_vcreg(resnet32(), VCRegLayerConfig(placement="downsample"))


def test_resnet32_with_mean_removal_hands_centred_features_to_the_next_block_and_shortcut():
    """Appendix A's mean removal after each of the 15 residual blocks: in training the next block (its
    convolutions and its shortcut) receives features with zero batch mean per channel; the state dict gains
    one running mean per layer, and in eval mode a block receives the previous output minus that mean."""
    torch.manual_seed(0)
    backbone = resnet32(in_chans=1).double()
    plain_keys = set(backbone.state_dict())
    names = apply_vcreg(backbone, VCRegLayerConfig(placement="blocks", alpha=0.16, beta=0.01, mean_removal=True))
    assert len(names) == 15
    seen = {}
    backbone.layer2[1].register_forward_pre_hook(
        lambda module, args: seen.update({"train" if module.training else "eval": args[0]}))
    backbone.layer2[0].register_forward_hook(lambda module, args, output: seen.update(raw=output),
                                             prepend=True)  # before the VCReg layer's hook: the block's output
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():  # a training forward without gradients still centres (as BatchNorm uses batch statistics)
        backbone.train()(x)
    assert float(seen["raw"].mean((0, 2, 3)).abs().max()) > 0.1  # a ReLU output: far from centred
    assert float(seen["train"].mean((0, 2, 3)).abs().max()) < 1e-12 * float(seen["raw"].abs().max())
    assert set(backbone.state_dict()) - plain_keys == {f"{name}.vcreg.running_mean" for name in names}
    with torch.no_grad():
        backbone.eval()(x)
    running_mean = backbone.layer2[0].vcreg.running_mean.view(1, -1, 1, 1)
    assert torch.equal(seen["eval"], seen["raw"] - running_mean)


def test_a_saved_mean_removal_backbone_is_evaluated_with_its_layers(tmp_path):
    """A saved backbone with mean removal holds the running means its eval forward subtracts: the loader every
    evaluation protocol uses puts its VCReg layers back (the file names ``vcreg.placement.rebuild_saved``), so the
    loaded network computes what the trained one computes in eval mode. Without mean removal the saved backbone
    is the plain network's. Detectron2's conversion refuses the first in one line."""
    for mean_removal in (False, True):
        backbone = resnet32(in_chans=1)
        apply_vcreg(backbone, VCRegLayerConfig(placement="blocks", mean_removal=mean_removal))
        backbone.train()(torch.randn(4, 1, 28, 28))
        path = tmp_path / f"mean_removal_{mean_removal}.safetensors"
        save_backbone(backbone, BackboneConfig(name="resnet32"), 1, path)
        loaded = load_backbone(path)[0]
        assert isinstance(loaded, CifarResNet)
        images = torch.randn(3, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(images), backbone.eval()(images))
        layers = [m for m in loaded.modules() if "vcreg" in m._modules]
        assert len(layers) == (15 if mean_removal else 0)
        if mean_removal:
            assert layers[0].vcreg.running_mean.abs().sum() > 0
            with pytest.raises(RunFolderError, match="Detectron2"):
                convert_checkpoint(path, tmp_path / "r32.pkl")
