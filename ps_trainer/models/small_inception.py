"""The small Inception for CIFAR-10 of Zhang et al. 2017, "Understanding deep learning requires
rethinking generalization" (appendix, Fig. 3): 1.65M parameters, trains on a CPU.

Three building blocks, each convolution followed by BatchNorm and ReLU:
  - Inception(ch1, ch3): a 1x1 convolution with ch1 filters beside a 3x3 with ch3, concatenated;
  - Downsample(ch3): a stride-2 3x3 convolution with ch3 filters beside a stride-2 3x3 max-pool;
  - the network: conv 3x3 96, Inception(32, 32), Inception(32, 48), Downsample(80),
    Inception(112, 48), (96, 64), (80, 80), (48, 96), Downsample(96), Inception(176, 160) x2,
    global mean pooling, a linear classifier.
The paper trains on 28x28 center crops of CIFAR-10 (a 7x7 map before pooling); 32x32 inputs work
too (8x8). Its BatchNorm has a shift but no scale, TensorFlow's default before a ReLU, which is
how the paper's Table 1 count of 1,649,402 parameters comes out; `bn_scale=True` adds the scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class ConvModule(nn.Module):
    """Convolution, BatchNorm (shift `beta`, no scale unless `bn_scale`), ReLU; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bn_scale: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, affine=bn_scale)
        self.beta = None if bn_scale else nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))  # (B, C_out, H/s, W/s)
        if self.beta is not None:
            x = x + self.beta.to(x.dtype).view(1, -1, 1, 1)
        return F.relu(x, inplace=True)


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, ch1: int, ch3: int, bn_scale: bool = False):
        super().__init__()
        self.branch1x1 = ConvModule(in_channels, ch1, 1, bn_scale=bn_scale)
        self.branch3x3 = ConvModule(in_channels, ch3, 3, bn_scale=bn_scale)
        self.out_channels = ch1 + ch3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x)], 1)  # (B, ch1 + ch3, H, W)


class DownsampleModule(nn.Module):
    def __init__(self, in_channels: int, ch3: int, bn_scale: bool = False):
        super().__init__()
        self.branch3x3 = ConvModule(in_channels, ch3, 3, stride=2, bn_scale=bn_scale)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # padded so both branches give ceil(H/2)
        self.out_channels = ch3 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.pool(x)], 1)  # (B, ch3 + C_in, H/2, W/2)


class SmallInception(nn.Module):
    # (kind, ch1 or ch3, ch3) in order, from Zhang et al.'s Fig. 3
    LAYOUT = [("inception", 32, 32), ("inception", 32, 48), ("downsample", 80, 0),
              ("inception", 112, 48), ("inception", 96, 64), ("inception", 80, 80),
              ("inception", 48, 96), ("downsample", 96, 0),
              ("inception", 176, 160), ("inception", 176, 160)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, bn_scale: bool = False):
        super().__init__()
        self.conv1 = ConvModule(in_channels, 96, 3, bn_scale=bn_scale)
        blocks, channels = [], 96
        for kind, a, b in self.LAYOUT:
            block = (InceptionModule(channels, a, b, bn_scale) if kind == "inception"
                     else DownsampleModule(channels, a, bn_scale))
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7 mean pooling at 28x28
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 96, 28, 28)
        x = self.blocks(x)  # (B, 336, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 336)
        return self.fc(x)  # (B, num_classes)


@register_model(input_size=28, min_input_size=1, num_classes=10,
                paper="Zhang et al. 2017, Rethinking Generalization (small Inception)")
def small_inception(num_classes: int = 10, in_channels: int = 3, **options) -> SmallInception:
    return SmallInception(num_classes, in_channels, **options)
