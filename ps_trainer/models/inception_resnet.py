"""Inception-ResNet-v1 and -v2 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning", Fig. 15).

Each Inception-ResNet block runs a small Inception module, projects its concatenation back to the
input width with a linear 1x1 convolution (with bias, no BatchNorm: sec. 3.2 keeps BatchNorm off the
summations), scales it down and adds it to the input before a ReLU. The scaling (sec. 3.3, "between
0.1 and 0.3") keeps very wide residual stacks from dying early in training; we use the released
model's 0.17 / 0.10 / 0.20 for the 35x35 / 17x17 / 8x8 blocks in both networks.

`inception_resnet_v1` follows the paper: the stem of Fig. 14, 5 x Inception-ResNet-A (Fig. 10),
Reduction-A with k, l, m, n = 192, 192, 256, 384 (Fig. 7), 10 x B (Fig. 11), Reduction-B (Fig. 12),
5 x C (Fig. 13), average pooling, dropout (keep 0.8).

`inception_resnet_v2` is the authors' released network (TF-slim, ported by timm as
`inception_resnet_v2`; same module names, so its ImageNet weights load with strict=True). The
paper's own v2 figures do not close: Fig. 17 projects to 1154 channels while Reduction-A gives 1152,
and Fig. 19 projects to 2048 where Reduction-B gives 2146, so no network matches them literally.
The released one differs from Fig. 15/16 in its stem (Inception-v3's, then a 320-channel Inception-A
`mixed_5b`, not Fig. 3), in widths (320 / 1088 / 2080), in depth (10 / 20 / 10 blocks, the last
without ReLU) and in a final 1x1 convolution to 1536 channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .inception_v4 import ConvBN, ReductionA, avg_pool_proj
from .registry import register_model


class Block35(nn.Module):
    """Inception-ResNet-A, 35x35 (Fig. 10 / 16): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3, then 1x1."""

    def __init__(self, channels: int, b0: int, b1: tuple, b2: tuple, scale: float):
        super().__init__()
        self.scale = scale
        self.branch0 = ConvBN(channels, b0, 1)
        self.branch1 = nn.Sequential(ConvBN(channels, b1[0], 1), ConvBN(b1[0], b1[1], 3, padding=1))
        self.branch2 = nn.Sequential(ConvBN(channels, b2[0], 1), ConvBN(b2[0], b2[1], 3, padding=1),
                                     ConvBN(b2[1], b2[2], 3, padding=1))
        self.conv2d = nn.Conv2d(b0 + b1[1] + b2[2], channels, 1)  # linear projection, with bias
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)  # (B, c_cat, 35, 35)
        return self.relu(self.conv2d(out) * self.scale + x)  # (B, channels, 35, 35)


class Block17(nn.Module):
    """Inception-ResNet-B (Fig. 11 / 17), or -C with `kernel=3` (Fig. 13 / 19): 1x1 | 1x1 -> 1xk ->
    kx1, then a linear 1x1 back to `channels`."""

    def __init__(self, channels: int, b0: int, b1: tuple, scale: float, kernel: int = 7,
                 relu: bool = True):
        super().__init__()
        self.scale = scale
        p = kernel // 2
        self.branch0 = ConvBN(channels, b0, 1)
        self.branch1 = nn.Sequential(ConvBN(channels, b1[0], 1),
                                     ConvBN(b1[0], b1[1], (1, kernel), padding=(0, p)),
                                     ConvBN(b1[1], b1[2], (kernel, 1), padding=(p, 0)))
        self.conv2d = nn.Conv2d(b0 + b1[2], channels, 1)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.branch0(x), self.branch1(x)], 1)  # (B, c_cat, H, W)
        out = self.conv2d(out) * self.scale + x  # (B, channels, H, W)
        return out if self.relu is None else self.relu(out)


class Block8(Block17):
    """Inception-ResNet-C, 8x8: Block17's shape with 1x3 / 3x1 convolutions."""

    def __init__(self, channels: int, b0: int, b1: tuple, scale: float, relu: bool = True):
        super().__init__(channels, b0, b1, scale, kernel=3, relu=relu)


class ReductionB(nn.Module):
    """Fig. 12 / 18, 17x17 -> 8x8: three 1x1 -> (3x3) -> 3x3/2 towers beside a 3x3/2 max-pool."""

    def __init__(self, channels: int, b0: tuple, b1: tuple, b2: tuple):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBN(channels, b0[0], 1), ConvBN(b0[0], b0[1], 3, stride=2))
        self.branch1 = nn.Sequential(ConvBN(channels, b1[0], 1), ConvBN(b1[0], b1[1], 3, stride=2))
        self.branch2 = nn.Sequential(ConvBN(channels, b2[0], 1), ConvBN(b2[0], b2[1], 3, padding=1),
                                     ConvBN(b2[1], b2[2], 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(branches, 1)  # (B, b0 + b1 + b2 + channels, 8, 8)


class Mixed5b(nn.Module):
    """The released v2's 35x35 entry: an Inception-v3-style module, 192 -> 320 channels."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBN(192, 96, 1)
        self.branch1 = nn.Sequential(ConvBN(192, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(ConvBN(192, 64, 1), ConvBN(64, 96, 3, padding=1),
                                     ConvBN(96, 96, 3, padding=1))
        self.branch3 = avg_pool_proj(192, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(branches, 1)  # (B, 320, 35, 35)


class InceptionResNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 scales: tuple = (0.17, 0.10, 0.20)):
        super().__init__()
        self.conv2d_1a = ConvBN(in_channels, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.conv2d_4b = ConvBN(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*[Block35(256, 32, (32, 32), (32, 32, 32), scales[0])
                                      for _ in range(5)])
        self.mixed_6a = ReductionA(256, k=192, l=192, m=256, n=384)
        self.repeat_1 = nn.Sequential(*[Block17(896, 128, (128, 128, 128), scales[1])
                                        for _ in range(10)])
        self.mixed_7a = ReductionB(896, (256, 384), (256, 256), (256, 256, 256))
        self.repeat_2 = nn.Sequential(*[Block8(1792, 192, (192, 192, 192), scales[2])
                                        for _ in range(5)])
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)  # Fig. 15's "Dropout (keep 0.8)"
        self.classif = nn.Linear(1792, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))  # (B, 64, 147, 147)
        x = self.conv2d_3b(self.maxpool_3a(x))  # (B, 80, 73, 73)
        x = self.conv2d_4b(self.conv2d_4a(x))  # (B, 256, 35, 35)
        x = self.repeat(x)  # (B, 256, 35, 35)
        x = self.mixed_6a(x)  # (B, 896, 17, 17)
        x = self.repeat_1(x)  # (B, 896, 17, 17)
        x = self.mixed_7a(x)  # (B, 1792, 8, 8)
        x = self.repeat_2(x)  # (B, 1792, 8, 8)
        x = torch.flatten(self.global_pool(x), 1)  # (B, 1792)
        return self.classif(self.head_drop(x))  # (B, num_classes)


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 scales: tuple = (0.17, 0.10, 0.20)):
        super().__init__()
        self.conv2d_1a = ConvBN(in_channels, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*[Block35(320, 32, (32, 32), (32, 48, 64), scales[0])
                                      for _ in range(10)])
        self.mixed_6a = ReductionA(320, k=256, l=256, m=384, n=384)
        self.repeat_1 = nn.Sequential(*[Block17(1088, 192, (128, 160, 192), scales[1])
                                        for _ in range(20)])
        self.mixed_7a = ReductionB(1088, (256, 384), (256, 288), (256, 288, 320))
        self.repeat_2 = nn.Sequential(*[Block8(2080, 192, (192, 224, 256), scales[2])
                                        for _ in range(9)])
        self.block8 = Block8(2080, 192, (192, 224, 256), scale=1.0, relu=False)
        self.conv2d_7b = ConvBN(2080, 1536, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.classif = nn.Linear(1536, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))  # (B, 64, 147, 147)
        x = self.conv2d_3b(self.maxpool_3a(x))  # (B, 80, 73, 73)
        x = self.maxpool_5a(self.conv2d_4a(x))  # (B, 192, 35, 35)
        x = self.repeat(self.mixed_5b(x))  # (B, 320, 35, 35)
        x = self.repeat_1(self.mixed_6a(x))  # (B, 1088, 17, 17)
        x = self.repeat_2(self.mixed_7a(x))  # (B, 2080, 8, 8)
        x = self.conv2d_7b(self.block8(x))  # (B, 1536, 8, 8)
        x = torch.flatten(self.global_pool(x), 1)  # (B, 1536)
        return self.classif(self.head_drop(x))  # (B, num_classes)


PAPER = "Szegedy et al. 2016, Inception-v4 and Inception-ResNet"


@register_model(input_size=299, min_input_size=75, paper=PAPER + " (Inception-ResNet-v1)")
def inception_resnet_v1(num_classes: int = 1000, in_channels: int = 3, **options):
    return InceptionResNetV1(num_classes, in_channels, **options)


@register_model(input_size=299, min_input_size=75, reference="timm inception_resnet_v2",
                paper=PAPER + " (Inception-ResNet-v2, as released)")
def inception_resnet_v2(num_classes: int = 1000, in_channels: int = 3, **options):
    return InceptionResNetV2(num_classes, in_channels, **options)
