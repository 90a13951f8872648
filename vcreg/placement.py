"""Where VCReg layers go in torchvision ResNets, timm ConvNeXts and timm ViTs (Section 3.2, Appendix A).

Placements:
- ``final``: the representation entering the classifier (vanilla VCReg, Section 3.1). The layer runs on the
  classifier's input, so it also works on a backbone whose classifier is ``nn.Identity``.
- ``blocks``: the output of every residual block, after the residual addition (the paper's choice): the
  bottleneck/basic blocks of a ResNet, ``stages[i].blocks[j]`` of a ConvNeXt, ``blocks[i]`` of a ViT.
- ``downsample``: the output of every downsampling layer only (Appendix A's third setup, Table 7): a
  ConvNeXt's stem and stage downsamplers; a ResNet's stem max-pool (when it has one) and the strided
  shortcut projections its blocks call ``downsample`` (a bottleneck ResNet's first projection only widens
  the channels at full resolution, so it is not one). A ViT has no downsampling layers (Appendix A), and
  ``small_convnet`` and the CIFAR ResNet-32 downsample inside their blocks, so it is refused for them.
- ``blocks+downsample``: ``blocks`` plus ``downsample`` (Appendix A's fourth setup), refused where
  ``downsample`` is.

``common.backbones.SmallConvNet`` (the CPU quickstart net) is supported too: its blocks are its eight
conv-BN-ReLU units and its final representation is its pooled output.

Layers are attached with forward hooks and stored as a child named ``vcreg`` of the module they follow.
Without mean removal they hold no parameters or buffers, so the state dict (and a saved
``backbone.safetensors``) is the same as without VCReg, and since forward is the identity the plain model
evaluates a VCReg-trained one exactly. With ``mean_removal`` (Appendix A) each layer changes the forward pass
and keeps a ``running_mean`` buffer (``vcreg.layer``): the state dict then has ``<module>.vcreg.running_mean``
entries, and only a network with the same layers evaluates it: ``apply_vcreg`` then names ``rebuild_saved`` in the
backbone's ``common.backbones.REBUILD_ATTRIBUTE``, so a saved ``backbone.safetensors`` carries it and
``common.backbones.load_backbone`` (every evaluation protocol) puts the layers back before loading the weights.

``VCRegLayerConfig`` is the ``vcreg`` section of a config; ``apply_vcreg(backbone, cfg.vcreg)`` reads it whole.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from torch import nn

from common.backbones import REBUILD_ATTRIBUTE, SmallConvNet
from common.config_types import NonNegativeFloat, PositiveFloat
from common.errors import ConfigError
from vcreg.layer import VCReg

PLACEMENTS = ("final", "blocks", "downsample", "blocks+downsample")
OVERRIDE_KEYS = ("alpha", "beta", "eps", "delta")


@dataclass
class VCRegLayerConfig:
    """The regulariser's settings (Sections 3.2-3.3, Appendix A). The paper reports the grid, not one choice:
    alpha in {1.28, 0.64, 0.32, 0.16}, beta in {0.16, 0.08, 0.04, 0.02, 0.01} (sweep files in vcreg/configs/);
    the defaults are the grid's mildest corner."""

    enabled: bool = True  # false: the same recipe without VCReg layers (the baseline)
    # final | blocks (the paper's) | downsample (Table 7) | blocks+downsample (Appendix A)
    placement: Literal["final", "blocks", "downsample", "blocks+downsample"] = "blocks"
    alpha: NonNegativeFloat = 0.16  # variance term's weight (Algorithm 1)
    beta: NonNegativeFloat = 0.01  # covariance term's weight (Algorithm 1)
    eps: PositiveFloat = 1e-5  # inside the variance term's square root
    delta: PositiveFloat | None = None      # smooth-L1 covariance threshold (eq. 7); None: squared, as Algorithm 1
    all_reduce: bool = False           # statistics (and mean removal) over all ranks instead of per rank
    # the reading: algorithm1 (Algorithm 1 as printed: covariance gradient without eq. 4's 1/(n-1), so beta's
    # strength grows with the rows per device) | batch_mean (eqs. 3-4 as written, averaged like the task loss:
    # alpha and beta mean the same at any per-device batch, accumulation and number of processes)
    normalization: Literal["algorithm1", "batch_mean"] = "algorithm1"
    # Appendix A's mean removal layer before each VCReg layer: the forward pass is centred over the batch
    # (eval mode: minus a running mean, as BatchNorm's); false: identity forward, centring only in backward
    mean_removal: bool = True
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)  # {"stages.3.*": {"alpha": 1.28}}

    @staticmethod
    def keys_added(values: dict) -> dict:
        """Before Appendix A's mean removal existed the forward pass was the identity
        (``common.config_upgrade.values_before_added_keys``)."""
        return {"mean_removal": False}


def _family(module: nn.Module) -> str | None:
    from timm.models.convnext import ConvNeXt
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(module, SmallConvNet):
        return "small_convnet"
    if isinstance(module, ConvNeXt):
        return "convnext"
    if isinstance(module, VisionTransformer):
        return "vit"
    if hasattr(module, "layer1") and hasattr(module, "fc"):  # torchvision ResNet and our CIFAR ResNet
        return "resnet"
    return None


def _find_network(model: nn.Module) -> tuple[str, str, nn.Module]:
    """The first (prefix, family, module) in ``model`` that is a supported network (wrappers allowed)."""
    for name, module in model.named_modules():
        family = _family(module)
        if family is not None:
            return (f"{name}." if name else ""), family, module
    raise ConfigError(f"apply_vcreg supports torchvision ResNets, timm ConvNeXt/ViT models and small_convnet, "
                     f"found none inside {type(model).__name__}")


def _sites(network: nn.Module, family: str, placement: str) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, on_input) for each layer position; on_input means "before the module" (the classifier)."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"unknown VCReg placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    named = dict(network.named_modules())
    if placement == "final":
        if family == "small_convnet":  # no classifier: its pooled output is the representation
            return [("pool", network.pool, False)]
        head = {"resnet": "fc", "convnext": "head.fc", "vit": "head"}[family]
        return [(head, named[head], True)]
    # every candidate position as (name, module, is a downsampling layer), in forward order
    candidates: list[tuple[str, nn.Module, bool]] = []
    if family == "resnet":
        if isinstance(getattr(network, "maxpool", None), nn.MaxPool2d):
            candidates.append(("maxpool", network.maxpool, True))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(network, stage, ())):
                projection = getattr(block, "downsample", None)
                if projection is not None and _is_strided(projection):
                    candidates.append((f"{stage}.{index}.downsample", projection, True))
                candidates.append((f"{stage}.{index}", block, False))
    elif family == "convnext":
        candidates.append(("stem", network.stem, True))
        for s, stage in enumerate(network.stages):
            if not isinstance(stage.downsample, nn.Identity):
                candidates.append((f"stages.{s}.downsample", stage.downsample, True))
            candidates.extend((f"stages.{s}.blocks.{b}", block, False) for b, block in enumerate(stage.blocks))
    elif family == "small_convnet":
        candidates.extend((f"features.{i}", m, False) for i, m in network.features.named_children()
                          if isinstance(m, nn.ReLU))
    else:
        candidates.extend((f"blocks.{b}", block, False) for b, block in enumerate(network.blocks))
    if placement != "blocks" and not any(is_downsample for _, _, is_downsample in candidates):
        what = "a ViT has none" if family == "vit" else f"{type(network).__name__} downsamples inside its blocks"
        raise ConfigError(f"placement {placement!r} needs downsampling layers and {what}; use 'blocks'")
    wanted = {"blocks": (False,), "downsample": (True,), "blocks+downsample": (False, True)}[placement]
    return [(name, module, False) for name, module, is_downsample in candidates if is_downsample in wanted]


def _is_strided(module: nn.Module) -> bool:
    """Whether a convolution or pooling inside ``module`` lowers the resolution."""
    return any(isinstance(m, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)) and _stride_above_one(m.stride)
               for m in module.modules())


def _stride_above_one(stride) -> bool:
    return any(s > 1 for s in (stride if isinstance(stride, tuple) else (stride,)))


def _run_on_output(module: nn.Module, args, output):
    return module.vcreg(output)


def _run_on_input(module: nn.Module, args):
    return (module.vcreg(args[0]), *args[1:])


def insert_layers(model: nn.Module, placement: str, make_layer: Callable[[str], nn.Module]) -> list[str]:
    """Insert ``make_layer(name)`` at every position of ``placement``; returns the positions' names.

    Names are module paths inside ``model`` (e.g. ``stages.2.blocks.4``, ``head.fc``).
    """
    prefix, family, network = _find_network(model)
    names = []
    for name, module, on_input in _sites(network, family, placement):
        if "vcreg" in module._modules:
            raise ValueError(f"{prefix}{name} already has a VCReg-position layer; call remove_layers first")
        module.vcreg = make_layer(prefix + name)
        handle = (module.register_forward_pre_hook(_run_on_input) if on_input
                  else module.register_forward_hook(_run_on_output))
        module._vcreg_hook = handle
        names.append(prefix + name)
    return names


def remove_layers(model: nn.Module) -> int:
    """Undo ``insert_layers``/``apply_vcreg``; returns how many layers were removed."""
    removed = 0
    for module in model.modules():
        if "vcreg" in module._modules and hasattr(module, "_vcreg_hook"):
            module._vcreg_hook.remove()
            del module._vcreg_hook
            del module._modules["vcreg"]
            removed += 1
    return removed


def apply_vcreg(model: nn.Module, cfg: VCRegLayerConfig) -> list[str]:
    """Insert ``VCReg`` layers into ``model`` in place as ``cfg`` says; returns the names of the regularised
    modules (none when ``cfg.enabled`` is false).

    ``cfg.overrides`` maps shell-style patterns over those names (``"stages.3.*"``, ``"layer4.*"``) to any of
    ``alpha``, ``beta``, ``eps``, ``delta``; later patterns win. A pattern matching no layer is an error.
    """
    if not cfg.enabled:
        return []
    for pattern, values in cfg.overrides.items():
        unknown = set(values) - set(OVERRIDE_KEYS)
        if unknown:
            raise ConfigError(f"VCReg override {pattern!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(OVERRIDE_KEYS)}")
    matched: set[str] = set()

    def make_layer(name: str) -> VCReg:
        settings = {"alpha": cfg.alpha, "beta": cfg.beta, "eps": cfg.eps, "delta": cfg.delta}
        for pattern, values in cfg.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                settings.update(values)
                matched.add(pattern)
        return VCReg(**settings, all_reduce=cfg.all_reduce, normalization=cfg.normalization,
                     mean_removal=cfg.mean_removal)

    names = insert_layers(model, cfg.placement, make_layer)
    unmatched = sorted(set(cfg.overrides) - matched)
    if unmatched:
        remove_layers(model)
        raise ConfigError(f"VCReg override patterns {unmatched} match no layer of placement {cfg.placement!r}; "
                         f"layers are named like {names[0]!r}")
    if cfg.mean_removal:  # the forward pass changed: a saved backbone must get these layers back to be evaluated
        setattr(model, REBUILD_ATTRIBUTE, {"function": "vcreg.placement:rebuild_saved", "config": asdict(cfg)})
    return names


def rebuild_saved(model: nn.Module, config: dict) -> None:
    """``common.backbones.load_backbone``'s hook: the VCReg layers (and their running means) a saved backbone
    was trained with, on the plain network it rebuilt."""
    apply_vcreg(model, VCRegLayerConfig(**config))
