"""apply_vcreg: positions per architecture, unchanged forward outputs and state dicts, overrides."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from common.backbones import SmallConvNet
from common.backward_scale import attach_backward_scale
from vcreg import VCReg, apply_vcreg, remove_layers
from vcreg.placement import VCRegLayerConfig, insert_layers


def _resnet():
    return torchvision.models.resnet18(num_classes=10)


def _convnext():
    return timm.create_model("convnext_atto", num_classes=10)


def _vit():
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)


def _small_convnet():
    return SmallConvNet(3, width=8)


def layer_config(placement: str, **settings) -> VCRegLayerConfig:
    """The layers at ``placement`` with an identity forward (no mean removal) and ``settings``."""
    return VCRegLayerConfig(placement=placement, mean_removal=False, **settings)


MODELS = {"resnet18": _resnet, "convnext_atto": _convnext, "vit_tiny": _vit, "small_convnet": _small_convnet}
EXPECTED_COUNTS = {  # blocks: ResNet-18 2+2+2+2, ConvNeXt-Atto 2+2+6+2, ViT-Ti 12
    # downsample: ResNet-18's max-pool + the strided shortcut projections of layer2-4; ConvNeXt's stem + 3
    ("resnet18", "final"): 1, ("resnet18", "blocks"): 8, ("resnet18", "downsample"): 1 + 3,
    ("resnet18", "blocks+downsample"): 8 + 1 + 3,
    ("convnext_atto", "final"): 1, ("convnext_atto", "blocks"): 12, ("convnext_atto", "downsample"): 4,
    ("convnext_atto", "blocks+downsample"): 12 + 4,
    ("vit_tiny", "final"): 1, ("vit_tiny", "blocks"): 12,
    ("small_convnet", "final"): 1, ("small_convnet", "blocks"): 8,
}


@pytest.mark.parametrize("model_name,placement", list(EXPECTED_COUNTS), ids=lambda v: str(v))
def test_forward_output_and_state_dict_unchanged(model_name, placement):
    torch.manual_seed(0)
    model = MODELS[model_name]().train()
    x = torch.randn(4, 3, 32, 32)
    reference = model(x)
    keys = list(model.state_dict())
    reference_grad = torch.autograd.grad(reference.square().sum(), model.parameters())
    names = apply_vcreg(model, layer_config(placement, alpha=1.28, beta=0.16))
    assert len(names) == EXPECTED_COUNTS[(model_name, placement)]
    assert sum(isinstance(m, VCReg) for m in model.modules()) == len(names)
    out = model(x)
    assert torch.equal(out, reference)
    assert list(model.state_dict()) == keys
    grad = torch.autograd.grad(out.square().sum(), model.parameters())
    # the layers act in backward: the first layer's gradient changes by far more than rounding could
    assert (grad[0] - reference_grad[0]).norm() > 1e-3 * reference_grad[0].norm()
    assert remove_layers(model) == len(names)
    assert not any(isinstance(m, VCReg) for m in model.modules())
    # the same operations on the same input in the same process: bit for bit the reference
    assert torch.equal(torch.autograd.grad(model(x).square().sum(), model.parameters())[0], reference_grad[0])


def test_paper_sized_models_get_table_1_layer_counts():
    convnext_t = timm.create_model("convnext_tiny", num_classes=0)
    vit_b32 = timm.create_model("vit_base_patch32_224", num_classes=0)
    resnet50 = torchvision.models.resnet50()
    assert len(apply_vcreg(convnext_t, layer_config("blocks", alpha=1.0, beta=1.0))) == 18
    assert len(apply_vcreg(vit_b32, layer_config("blocks", alpha=1.0, beta=1.0))) == 12
    assert len(apply_vcreg(resnet50, layer_config("blocks", alpha=1.0, beta=1.0))) == 16
    # ResNet-50's layer1 projection only widens the channels (stride 1): max-pool + layer2-4's projections
    assert apply_vcreg(torchvision.models.resnet50(), layer_config("downsample", alpha=1.0, beta=1.0)) == [
        "maxpool", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    assert apply_vcreg(timm.create_model("convnext_tiny", num_classes=0), layer_config("downsample", alpha=1.0, beta=1.0)) == [
        "stem", "stages.1.downsample", "stages.2.downsample", "stages.3.downsample"]


def test_overrides_wrappers_and_errors():
    wrapped = nn.Sequential(_convnext())  # a backbone wrapper: the network is found inside
    names = apply_vcreg(wrapped, layer_config("blocks", alpha=0.16, beta=0.01,
                        overrides={"0.stages.3.*": {"alpha": 1.28}, "0.stages.3.blocks.1": {"beta": 0.08}}))
    layers = {name: m for name, m in wrapped.named_modules() if isinstance(m, VCReg)}
    assert names[0] == "0.stages.0.blocks.0"
    assert (layers["0.stages.0.blocks.0.vcreg"].alpha, layers["0.stages.0.blocks.0.vcreg"].beta) == (0.16, 0.01)
    assert (layers["0.stages.3.blocks.0.vcreg"].alpha, layers["0.stages.3.blocks.0.vcreg"].beta) == (1.28, 0.01)
    assert (layers["0.stages.3.blocks.1.vcreg"].alpha, layers["0.stages.3.blocks.1.vcreg"].beta) == (1.28, 0.08)
    with pytest.raises(ValueError, match="already"):
        apply_vcreg(wrapped, layer_config("blocks", alpha=0.16, beta=0.01))
    with pytest.raises(ValueError, match="match no layer"):
        apply_vcreg(_convnext(), layer_config("blocks", alpha=0.16, beta=0.01, overrides={"layer4.*": {"alpha": 1.0}}))
    with pytest.raises(ValueError, match="unknown keys"):
        apply_vcreg(_convnext(), layer_config("blocks", alpha=0.16, beta=0.01, overrides={"stages.*": {"gamma": 1.0}}))
    with pytest.raises(ValueError, match="unknown VCReg placement"):
        apply_vcreg(_resnet(), layer_config("everywhere", alpha=0.16, beta=0.01))
    for placement in ("downsample", "blocks+downsample"):
        with pytest.raises(ValueError, match="ViT has none"):
            apply_vcreg(_vit(), layer_config(placement, alpha=0.16, beta=0.01))
        with pytest.raises(ValueError, match="downsamples inside its blocks"):
            apply_vcreg(_small_convnet(), layer_config(placement, alpha=0.16, beta=0.01))
    with pytest.raises(ValueError, match="supports torchvision ResNets"):
        apply_vcreg(nn.Linear(3, 3), layer_config("blocks", alpha=0.16, beta=0.01))


def test_fp16_autocast_without_a_backward_scale_is_refused():
    model = _small_convnet()
    apply_vcreg(model, layer_config("final", alpha=1.0, beta=1.0, normalization="batch_mean"))
    assert attach_backward_scale(model, None) == 1  # apply_vcreg's layers declare backward_scale
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="attach_backward_scale"):
        model(torch.randn(2, 3, 16, 16))
    layer = next(m for m in model.modules() if isinstance(m, VCReg))
    assert layer.normalization == "batch_mean"


def test_insert_layers_places_any_layer_at_the_same_positions():
    model = _resnet()
    seen = []
    names = insert_layers(model, "blocks", lambda name: seen.append(name) or nn.Identity())
    assert names == seen == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
