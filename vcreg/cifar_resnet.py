"""ResNet-32 for 32 px images (He et al., 2016, Section 4.2), the long-tail backbone of Appendix C.3.

Three stages of five basic blocks with 16, 32 and 64 channels; the first block of stages 2 and 3 halves
the resolution. Shortcuts that change shape subsample and zero-pad the channels (the paper's option A,
as in the long-tail literature's ResNet-32), so they hold no parameters. Attribute names follow
torchvision's ResNet (``conv1``, ``layer1``..``layer3``, ``fc``) so ``apply_vcreg`` treats it as one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra_channels = stride, out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``6 n + 2`` layers; ``n = 5`` is ResNet-32. ``num_classes=0`` makes ``fc`` the identity (a backbone)."""

    def __init__(self, blocks_per_stage: int = 5, num_classes: int = 0, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        channels = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, 2 if (stage > 1 and index == 0) else 1))
                channels = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet32(num_classes: int = 0, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(5, num_classes, in_chans)
