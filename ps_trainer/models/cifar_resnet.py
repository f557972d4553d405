"""The CIFAR-10 ResNets of He et al. 2015, sec. 4.2: ResNet-20/32/44/56/110 for 32x32 inputs.

A 3x3 convolution with 16 filters, then three stages of n basic blocks on 32x32, 16x16 and 8x8 maps
with 16, 32 and 64 filters (6n + 2 weighted layers), global average pooling and a 10-way classifier.
The paper uses identity shortcuts everywhere on CIFAR (option A): where a stage halves the map and
doubles the width, the shortcut subsamples by 2 and pads the new channels with zeros, so these
networks have no shortcut parameters (Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters).
`shortcut="B"` uses 1x1 projections there instead. Small enough to train on a CPU in minutes: what
the tests and the staleness harness use.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .resnet import BasicBlock, conv1x1, conv3x3


class ZeroPadShortcut(nn.Module):
    """Option A: identity on the old channels, zeros on the new ones, subsampled by `stride`."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, C + extra, H/s, W/s)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (projection), got {shortcut!r}")
        n = (depth - 2) // 6
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the paper's initialisation (He et al. 2015, "Delving deep")
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(planes - self.inplanes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer1(x)  # (B, 16, 32, 32)
        x = self.layer2(x)  # (B, 32, 16, 16)
        x = self.layer3(x)  # (B, 64, 8, 8)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return self.fc(x)  # (B, num_classes)


PAPER = "He et al. 2015, sec. 4.2 (CIFAR-10)"
register = partial(register_model, input_size=32, min_input_size=1, num_classes=10)


@register(paper=PAPER + ", 20 layers")
def resnet20(num_classes: int = 10, in_channels: int = 3, **options) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels, **options)


@register(paper=PAPER + ", 32 layers")
def resnet32(num_classes: int = 10, in_channels: int = 3, **options) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels, **options)


@register(paper=PAPER + ", 44 layers")
def resnet44(num_classes: int = 10, in_channels: int = 3, **options) -> CifarResNet:
    return CifarResNet(44, num_classes, in_channels, **options)


@register(paper=PAPER + ", 56 layers")
def resnet56(num_classes: int = 10, in_channels: int = 3, **options) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, **options)


@register(paper=PAPER + ", 110 layers")
def resnet110(num_classes: int = 10, in_channels: int = 3, **options) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels, **options)
