"""ResNet-32 for 32 px images (He et al., 2016, "Deep Residual Learning for Image Recognition", Section 4.2),
the long-tail backbone of VCReg's Table 3 (Appendix C.3): ``backbone.name=resnet32``.

A 3x3 convolution with 16 channels, then three stages of ``n`` basic blocks (two 3x3 convolutions each) with
16, 32 and 64 channels on 32, 16 and 8 px maps, global average pooling: ``6 n + 2`` weighted layers, ``n = 5``
for ResNet-32 (0.46M parameters with a 10-way classifier). The first block of stages 2 and 3 halves the
resolution with a stride-2 convolution. Shortcuts are He et al.'s option A, as in the long-tail literature's
ResNet-32 (Cao et al., 2019, LDAM-DRW's released code): identity, or where the shape changes, every second
pixel with the new channels zero-padded equally on both sides, so no shortcut holds parameters. Convolutions
are initialised as that code does (He et al., 2015's normal initialisation with fan-in). Attribute names follow
torchvision's ResNet (``conv1``, ``layer1``..``layer3``, ``fc``) so ``vcreg.apply_vcreg`` treats it as one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an option-A shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

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
        self.conv1 = nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        channels = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, 2 if (stage > 1 and index == 0) else 1))
                channels = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet32(num_classes: int = 0, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(5, num_classes, in_chans)
