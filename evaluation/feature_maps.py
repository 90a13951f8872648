"""The last convolutional feature map of a backbone, and Goyal et al.'s pooled res5 feature.

``last_feature_map(backbone)`` is a module mapping images ``[B, C, H, W]`` to the map the backbone's
global average pooling would reduce: ``layer4`` ("res5") of a torchvision ResNet, ``forward_features`` of
a convolutional timm model, the conv stages of ``small_convnet``.

``Res5AvgPool6`` is the ResNet-50 feature of the VOC07 SVM benchmark of Goyal et al. (2019, "Scaling and
Benchmarking Self-Supervised Visual Representation Learning": the blob ``res5_2_branch2c_bn_s1k6_resize``
of their benchmark code, ``["AvgPool2d", [[6, 6], 1, 0]]`` on res5 in VISSL's VOC07 SVM config): the
res5 output averaged over 6 x 6 windows with stride 1 and no padding, flattened. At 224 x 224 input
ResNet-50's res5 map is 2048 x 7 x 7 (stride 32), so the windows sit at 7 - 6 + 1 = 2 positions per axis
and the feature has 2048 x 2 x 2 = 8192 dimensions (channel-major, as ``torch.flatten`` orders them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from common.backbones import SmallConvNet
from common.errors import ConfigError


class _ForwardFeatures(nn.Module):
    """A timm model's ``forward_features``, which must return a spatial map ``[B, C, h, w]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        output = self.model.forward_features(images)
        if output.ndim != 4:
            raise ValueError(f"{type(self.model).__name__}.forward_features returns shape {tuple(output.shape)}, "
                             "not a [B, C, h, w] map: the res5 feature needs a convolutional backbone")
        return output


def last_feature_map(backbone: nn.Module) -> nn.Module:
    """A module (sharing ``backbone``'s parameters) from images to its last convolutional feature map."""
    if isinstance(backbone, SmallConvNet):
        return backbone.features
    if isinstance(backbone, torchvision.models.ResNet):
        return nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
                             backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    if hasattr(backbone, "forward_features"):
        return _ForwardFeatures(backbone)
    raise ConfigError(f"no feature map known for a {type(backbone).__name__} backbone (torchvision ResNets, "
                     "timm convolutional models and small_convnet have one)")


class Res5AvgPool6(nn.Module):
    """Goyal et al.'s VOC07 feature: the last feature map averaged over 6 x 6 windows, stride 1, flattened."""

    window = 6

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.feature_map = last_feature_map(backbone)
        self.train(backbone.training)  # the wrapper's mode is what extraction restores afterwards

    def forward(self, images: Tensor) -> Tensor:
        feature_map = self.feature_map(images)
        if min(feature_map.shape[-2:]) < self.window:
            size = tuple(feature_map.shape[-2:])
            raise ConfigError(f"the feature map is {size}, smaller than the {self.window} x {self.window} window; "
                             "use a larger image_size (224 for a ResNet-50)")
        return torch.flatten(F.avg_pool2d(feature_map, self.window, stride=1), 1)
