"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", Fig. 9).

299x299 inputs; the stem of Fig. 3 (three 3x3 convolutions, then three concatenations of a strided
convolution beside a pooling or of two convolution towers) down to 35x35x384, then 4 x Inception-A
(Fig. 4), Reduction-A (Fig. 7 with k, l, m, n = 192, 224, 256, 384), 7 x Inception-B (Fig. 5),
Reduction-B (Fig. 8), 3 x Inception-C (Fig. 6), average pooling, dropout (keep 0.8), softmax.
"V" in the figures means no padding; every other convolution keeps the grid.

Module names and order are timm's (`features.N`, `last_linear`, ported from TF-slim by Cadene), so
timm's `inception_v4` ImageNet weights load with strict=True. The 1xn / nx1 factorized pairs are in
TF-slim's order (e.g. 1x7 then 7x1 in the stem's second tower); the paper's figures draw some of
these pairs the other way round, which changes neither parameters nor multiply-adds.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class ConvBN(nn.Module):
    """Convolution, BatchNorm (TF's epsilon), ReLU: timm's ConvNormAct, same state_dict keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def avg_pool_proj(in_channels: int, out_channels: int) -> nn.Sequential:
    # TF's 'SAME' average pooling ignores the padded zeros, hence count_include_pad=False.
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                         ConvBN(in_channels, out_channels, 1))


class Mixed3a(nn.Module):
    """Stem, first concatenation: 3x3/2 max-pool | 3x3/2 conv 96 (147x147x64 -> 73x73x160)."""

    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = ConvBN(64, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)  # (B, 160, 73, 73)


class Mixed4a(nn.Module):
    """Stem, second: 1x1 64 -> 3x3 96 V | 1x1 64 -> 1x7 -> 7x1 -> 3x3 96 V (-> 71x71x192)."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 96, 3))
        self.branch1 = nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 64, (1, 7), padding=(0, 3)),
                                     ConvBN(64, 64, (7, 1), padding=(3, 0)), ConvBN(64, 96, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], 1)  # (B, 192, 71, 71)


class Mixed5a(nn.Module):
    """Stem, third: 3x3/2 conv 192 V | 3x3/2 max-pool (-> 35x35x384)."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)  # (B, 384, 35, 35)


class InceptionA(nn.Module):
    """Fig. 4, 35x35: 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg -> 1x1 96."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBN(384, 96, 1)
        self.branch1 = nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3, padding=1),
                                     ConvBN(96, 96, 3, padding=1))
        self.branch3 = avg_pool_proj(384, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(branches, 1)  # (B, 384, 35, 35)


class ReductionA(nn.Module):
    """Fig. 7, 35x35 -> 17x17: 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m | 3x3/2 max-pool."""

    def __init__(self, in_channels: int = 384, k: int = 192, l: int = 224, m: int = 256,  # noqa: E741
                 n: int = 384):
        super().__init__()
        self.branch0 = ConvBN(in_channels, n, 3, stride=2)
        self.branch1 = nn.Sequential(ConvBN(in_channels, k, 1), ConvBN(k, l, 3, padding=1),
                                     ConvBN(l, m, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)  # (B, n+m+C, 17, 17)


class InceptionB(nn.Module):
    """Fig. 5, 17x17: 1x1 384 | 1x1 192 -> 1x7 224 -> 7x1 256 | 1x1 192 -> 7x1, 1x7, 7x1, 1x7 -> 256
    | avg -> 1x1 128."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBN(1024, 384, 1)
        self.branch1 = nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 224, (1, 7), padding=(0, 3)),
                                     ConvBN(224, 256, (7, 1), padding=(3, 0)))
        self.branch2 = nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 192, (7, 1), padding=(3, 0)),
                                     ConvBN(192, 224, (1, 7), padding=(0, 3)),
                                     ConvBN(224, 224, (7, 1), padding=(3, 0)),
                                     ConvBN(224, 256, (1, 7), padding=(0, 3)))
        self.branch3 = avg_pool_proj(1024, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(branches, 1)  # (B, 1024, 17, 17)


class ReductionB(nn.Module):
    """Fig. 8, 17x17 -> 8x8: 1x1 192 -> 3x3/2 192 | 1x1 256 -> 1x7 256 -> 7x1 320 -> 3x3/2 320 | max."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(ConvBN(1024, 256, 1), ConvBN(256, 256, (1, 7), padding=(0, 3)),
                                     ConvBN(256, 320, (7, 1), padding=(3, 0)),
                                     ConvBN(320, 320, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)  # (B, 1536, 8, 8)


class InceptionC(nn.Module):
    """Fig. 6, 8x8: 1x1 256 | 1x1 384 -> (1x3 | 3x1) 256 | 1x1 384 -> 3x1 448 -> 1x3 512 ->
    (1x3 | 3x1) 256 | avg -> 1x1 256."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBN(1536, 256, 1)
        self.branch1_0 = ConvBN(1536, 384, 1)
        self.branch1_1a = ConvBN(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = ConvBN(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = ConvBN(1536, 384, 1)
        self.branch2_1 = ConvBN(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = ConvBN(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = ConvBN(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = ConvBN(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = avg_pool_proj(1536, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.branch0(x)  # (B, 256, 8, 8)
        t = self.branch1_0(x)  # (B, 384, 8, 8)
        x1 = torch.cat([self.branch1_1a(t), self.branch1_1b(t)], 1)  # (B, 512, 8, 8)
        t = self.branch2_2(self.branch2_1(self.branch2_0(x)))  # (B, 512, 8, 8)
        x2 = torch.cat([self.branch2_3a(t), self.branch2_3b(t)], 1)  # (B, 512, 8, 8)
        return torch.cat([x0, x1, x2, self.branch3(x)], 1)  # (B, 1536, 8, 8)


class InceptionV4(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            ConvBN(in_channels, 32, 3, stride=2),  # (B, 32, 149, 149)
            ConvBN(32, 32, 3),  # (B, 32, 147, 147)
            ConvBN(32, 64, 3, padding=1),  # (B, 64, 147, 147)
            Mixed3a(), Mixed4a(), Mixed5a(),  # (B, 384, 35, 35)
            *[InceptionA() for _ in range(4)],
            ReductionA(),  # (B, 1024, 17, 17)
            *[InceptionB() for _ in range(7)],
            ReductionB(),  # (B, 1536, 8, 8)
            *[InceptionC() for _ in range(3)],
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)  # the paper's "Dropout (keep 0.8)"
        self.last_linear = nn.Linear(1536, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1536, 8, 8)
        x = torch.flatten(self.global_pool(x), 1)  # (B, 1536)
        return self.last_linear(self.head_drop(x))  # (B, num_classes)


@register_model(input_size=299, min_input_size=75, reference="timm inception_v4",
                paper="Szegedy et al. 2016, Inception-v4 and Inception-ResNet (Inception-v4)")
def inception_v4(num_classes: int = 1000, in_channels: int = 3, **options) -> InceptionV4:
    return InceptionV4(num_classes, in_channels, **options)
