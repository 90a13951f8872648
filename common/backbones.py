"""Backbones: any torchvision or timm model by name, returning pooled features and their width.

``build_backbone(cfg, in_chans)`` returns ``(module, feature_dim)``: the module maps images
``[B, C, H, W]`` to pooled features ``[B, feature_dim]`` (the classifier removed). ``load_backbone(spec)``
rebuilds one from a run folder, a checkpoint folder, a ``backbone.safetensors`` or a model name.
A ``backbone.safetensors`` is self-describing: its metadata holds the ``BackboneConfig`` and input channels.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from common.cifar_resnet import resnet32
from common.errors import ConfigError, DataError, RunFolderError


@dataclass
class BackboneConfig:
    name: str = "resnet50"       # torchvision name, "timm:<name>", or a built-in net (small_convnet, resnet32)
    pretrained: bool = False     # load the library's pretrained weights (needs internet the first time)
    cifar_stem: bool = False     # 3x3 stride-1 first convolution and no max-pool, for 32 px images
    in_chans: int | None = None  # None: the data's channels (torchvision ResNets are adapted when not 3)
    width: int = 32              # small_convnet: channels of the first stage, doubled at each of its 4 stages
    sync_bn: bool = True         # SyncBatchNorm across GPUs (no effect on one process)


class SmallConvNet(nn.Module):
    """Four conv-BN-ReLU stages (two 3x3 convs each, stride 2 from the second) and global average pooling.

    The CPU quickstart backbone: small enough to train SimCLR on Fashion-MNIST on two cores.
    """

    def __init__(self, in_chans: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage in range(4):
            out = width * 2 ** stage
            for conv in range(2):
                stride = 2 if (stage > 0 and conv == 0) else 1
                layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _weights_unavailable(cfg: BackboneConfig, reason: object, cache: str) -> DataError:
    return DataError(f"cannot download the pretrained weights of backbone '{cfg.name}' ({reason}): put them in "
                     f"{cache} on a machine with network (the same call fills it), or set backbone.pretrained=false")


def _torchvision_model(cfg: BackboneConfig, name: str) -> nn.Module:
    if not cfg.pretrained:
        return torchvision.models.get_model(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights)
    except URLError as error:  # raised on the first failed attempt: torch.hub does not retry
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise _weights_unavailable(cfg, error.reason, str(cache)) from error


def _torchvision_backbone(cfg: BackboneConfig, in_chans: int) -> tuple[nn.Module, int]:
    model = _torchvision_model(cfg, cfg.name.removeprefix("torchvision:"))
    if not hasattr(model, "fc"):
        raise ConfigError(f"backbone.name '{cfg.name}': only torchvision ResNet-style models (with .fc) are "
                          "supported; use timm:<name> for other architectures")
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if cfg.cifar_stem:
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != model.conv1.in_channels:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    return model, feature_dim


# The files timm looks for in a Hugging Face model repository, in its order of preference.
_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                   "open_clip_pytorch_model.bin")


def _check_timm_weights(cfg: BackboneConfig, name: str) -> None:
    """Fail in one line, without timm's minute of retries, when the pretrained weights of ``name`` are neither
    cached nor downloadable: a cached file or a reachable hub lets ``timm.create_model`` proceed."""
    import huggingface_hub
    import timm
    from huggingface_hub import constants as hub_constants
    from huggingface_hub.errors import HfHubHTTPError

    pretrained = timm.models.get_pretrained_cfg(name)
    repo = pretrained.hf_hub_id if pretrained is not None else None
    if not repo:
        return  # weights behind a plain URL: torch.hub fails once, without retrying (caught by the caller)
    files = [pretrained.hf_hub_filename] if pretrained.hf_hub_filename else list(_TIMM_HUB_FILES)
    if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, f), str) for f in files):
        return
    cache = f"{hub_constants.HF_HUB_CACHE} (repository {repo})"
    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise _weights_unavailable(cfg, "HF_HUB_OFFLINE is set and they are not cached", cache)
    try:  # one request, no retries: the server's answer (even "not found") means the hub is reachable
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, files[0]), timeout=10)
    except HfHubHTTPError:
        return
    except Exception as error:
        raise _weights_unavailable(cfg, " ".join(str(error).split()) or type(error).__name__, cache) from error


def _timm_backbone(cfg: BackboneConfig, in_chans: int) -> tuple[nn.Module, int]:
    import timm

    name = cfg.name.removeprefix("timm:")
    architecture, _, tag = name.partition(".")
    if not timm.is_model(architecture):
        similar = timm.list_models(f"*{architecture}*")[:5]
        hint = f" (similar: {', '.join(similar)})" if similar else ""
        raise ConfigError(f"backbone.name '{cfg.name}': '{architecture}' is not a timm model{hint}")
    if tag and name not in timm.list_pretrained(f"{architecture}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{architecture}.*")]
        raise ConfigError(f"backbone.name '{cfg.name}': timm has no weights tagged '{tag}' for '{architecture}' "
                          f"(tags: {', '.join(tags) or 'none'})")
    if cfg.cifar_stem:
        raise ConfigError(f"backbone.cifar_stem is only implemented for torchvision ResNets, not '{cfg.name}'")
    if cfg.pretrained:
        _check_timm_weights(cfg, name)
    try:
        model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=0, in_chans=in_chans)
    except URLError as error:
        raise _weights_unavailable(cfg, error.reason, str(Path(torch.hub.get_dir()) / "checkpoints")) from error
    return model, model.num_features


def build_backbone(cfg: BackboneConfig, in_chans: int = 3) -> tuple[nn.Module, int]:
    in_chans = cfg.in_chans or in_chans
    if cfg.name == "small_convnet":
        model = SmallConvNet(in_chans, cfg.width)
        return model, model.num_features
    if cfg.name == "resnet32":  # He et al.'s CIFAR ResNet-32 (common/cifar_resnet.py)
        if cfg.pretrained or cfg.cifar_stem:
            raise ConfigError("backbone.name=resnet32 has no pretrained weights and is a CIFAR network already: "
                              "set backbone.pretrained=false and backbone.cifar_stem=false")
        model = resnet32(in_chans=in_chans)
        return model, model.num_features
    if cfg.name.startswith("timm:"):
        return _timm_backbone(cfg, in_chans)
    if cfg.name.removeprefix("torchvision:") in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_backbone(cfg, in_chans)
    import timm

    if timm.is_model(cfg.name):
        return _timm_backbone(cfg, in_chans)
    raise ConfigError(f"backbone.name '{cfg.name}' is neither small_convnet, resnet32, a torchvision "
                      "classification model nor a timm model")


BACKBONE_FILE = "backbone.safetensors"
_METADATA_KEY = "backbone_config"
# A backbone whose forward pass a paper package changed with modules of its own (VCReg's mean removal keeps a
# running mean per layer) names, in this attribute, how to put them back on the plain network:
# {"function": "package.module:name", "config": {...}}; ``load_backbone`` imports the function by name (as
# ``common.sweep`` imports a trainer) and calls ``function(backbone, config)`` before loading the weights.
REBUILD_ATTRIBUTE = "saved_rebuild"
_REBUILD_KEY = "rebuild"


def save_backbone(backbone: nn.Module, cfg: BackboneConfig, in_chans: int, path: str | Path) -> None:
    """Weights as safetensors, with the ``BackboneConfig`` (and input channels) as JSON metadata, and the
    backbone's ``REBUILD_ATTRIBUTE`` when it has one (see ``load_backbone``)."""
    config = {f.name: getattr(cfg, f.name) for f in fields(cfg)} | {"in_chans": in_chans}
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    metadata = {_METADATA_KEY: json.dumps(config)}
    rebuild = getattr(backbone, REBUILD_ATTRIBUTE, None)
    if rebuild is not None:
        metadata[_REBUILD_KEY] = json.dumps(rebuild)
    tmp = Path(f"{path}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~current_umask())  # safetensors writes 0600; run files follow the user's umask
    tmp.replace(path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resolve_file(spec: Path) -> Path:
    if spec.is_file():
        return spec
    candidates = [spec / BACKBONE_FILE]
    checkpoints = spec / "checkpoints"
    if checkpoints.is_dir():
        steps = sorted(p for p in checkpoints.iterdir() if p.name.startswith("step_") and (p / BACKBONE_FILE).exists())
        candidates += [steps[-1] / BACKBONE_FILE] if steps else []
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RunFolderError(f"no {BACKBONE_FILE} in '{spec}' (expected a run folder, a checkpoint folder or the file)")


def read_backbone_config(spec: str | Path) -> tuple[BackboneConfig, int, Path]:
    """The ``BackboneConfig``, input channels and file of a saved backbone (run folder, checkpoint or file)."""
    file = _resolve_file(Path(spec))
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 (safetensors raises its own error types for corrupt headers)
        raise RunFolderError(f"'{file}' is not a readable safetensors file: {error}") from None
    if _METADATA_KEY not in metadata:
        raise RunFolderError(f"'{file}' has no '{_METADATA_KEY}' metadata: not a backbone saved by ssl-repro")
    config = json.loads(metadata[_METADATA_KEY])
    in_chans = config.pop("in_chans")
    known = {f.name for f in fields(BackboneConfig)}
    cfg = BackboneConfig(**{k: v for k, v in config.items() if k in known})
    cfg.pretrained = False
    return cfg, in_chans, file


def _rebuild(backbone: nn.Module, file: Path) -> None:
    """Put back the modules a paper package added to the saved network (``REBUILD_ATTRIBUTE``)."""
    with safe_open(str(file), framework="pt") as handle:
        spec = (handle.metadata() or {}).get(_REBUILD_KEY)
    if spec is None:
        return
    rebuild = json.loads(spec)
    module_name, _, function_name = rebuild["function"].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError):
        raise RunFolderError(f"'{file}' needs {rebuild['function']} to rebuild its network, which this "
                             "installation does not have") from None
    function(backbone, rebuild["config"])


def is_model_name(spec: str | Path) -> bool:
    """True when ``spec`` names a model rather than a path on disk."""
    text = str(spec)
    return not Path(text).exists() and not text.endswith(".safetensors") and "/" not in text


def load_backbone(spec: str | Path, pretrained: bool = True) -> tuple[nn.Module, int]:
    """A backbone from a run folder, a checkpoint folder, a ``.safetensors`` file or a model name.

    Returns ``(backbone, feature_dim)``. A model name (``resnet50``, ``timm:vit_small_patch16_224``) gives
    the library's pretrained weights when ``pretrained`` is true. The input channels of a saved backbone
    are in ``read_backbone_config``.
    """
    if is_model_name(spec):
        return build_backbone(BackboneConfig(name=str(spec), pretrained=pretrained), 3)
    if not Path(spec).exists():
        raise RunFolderError(f"checkpoint not found: {spec}")
    cfg, in_chans, file = read_backbone_config(spec)
    backbone, dim = build_backbone(cfg, in_chans)
    _rebuild(backbone, file)
    state = load_file(str(file))
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    # an empty buffer takes its shape from the file (a layer that learns its width at the first forward)
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape and expected[k].numel()]
    if missing or unexpected or reshaped:
        raise RunFolderError(f"'{file}' does not fit backbone '{cfg.name}': {len(missing)} missing keys "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                         f"{len(reshaped)} of another shape (e.g. {reshaped[:2]})")
    backbone.load_state_dict(state)
    return backbone, dim
