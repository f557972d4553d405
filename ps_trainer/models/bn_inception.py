"""BN-Inception, a.k.a. Inception v2 (Ioffe & Szegedy 2015, "Batch Normalization", appendix Fig. 5).

GoogLeNet with BatchNorm after every convolution and three changes to its modules: each 5x5
convolution becomes two stacked 3x3 ("double #3x3"), there are three 28x28 modules instead of two,
and the grid shrinks inside modules (3c) and (4e), whose 3x3 branches stride by 2 beside a
stride-2 max-pool passed through unprojected, instead of between modules. Pooling branches average
in most modules and take the maximum in (5b). No LRN, and no dropout (sec. 4.2.1).

The table's output-size column disagrees with its own filter counts in four rows: (3c) lists
28x28x576 (its stride gives 14x14), (4c) and (4d) list 576 channels where the filters give
160+160+160+128 = 608 and 96+192+192+128 = 608, and (4e) lists 1024 where pass-through + 192 + 256
gives 1056. We follow the filter counts, as the widely used Caffe port does; the test records it.
The first convolution is starred in the table; `separable_stem=True` makes it a depthwise 7x7 with
depth multiplier 8 followed by a 1x1, the layer whose 2.7K params / 34M ops GoogLeNet's Table 1 lists.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class BasicConv2d(nn.Module):
    """Convolution (no bias: BatchNorm shifts), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionBN(nn.Module):
    """One row of Fig. 5: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool + proj.

    `stride=2` rows have no 1x1 branch and pass the max-pooled input through (`pool_proj=0`).
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, dbl_red: int,
                 dbl: int, pool: str, pool_proj: int, stride: int = 1):
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + dbl + (pool_proj or in_channels)
        self.branch1x1 = BasicConv2d(in_channels, ch1x1, kernel_size=1) if ch1x1 else None
        self.branch3x3 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, stride=stride, padding=1))
        self.branch3x3dbl = nn.Sequential(
            BasicConv2d(in_channels, dbl_red, kernel_size=1),
            BasicConv2d(dbl_red, dbl, kernel_size=3, padding=1),
            BasicConv2d(dbl, dbl, kernel_size=3, stride=stride, padding=1))
        # Padding 1 keeps every branch at ceil(H / stride) for odd sizes as well.
        pooling = (nn.MaxPool2d(3, stride=stride, padding=1) if pool == "max"
                   else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        self.branch_pool = (nn.Sequential(pooling, BasicConv2d(in_channels, pool_proj, kernel_size=1))
                            if pool_proj else pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return torch.cat(branches, 1)  # (B, out_channels, H / stride, W / stride)


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, separable_stem: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if separable_stem:  # depthwise 7x7/2 with depth multiplier 8, then a pointwise 1x1 to 64
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channels, 8 * in_channels, 7, stride=2, padding=3, groups=in_channels,
                          bias=False),
                BasicConv2d(8 * in_channels, 64, kernel_size=1))
        else:
            self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        pool = partial(nn.MaxPool2d, 3, stride=2, ceil_mode=True)  # Caffe's rounding, as GoogLeNet
        self.maxpool1 = pool()
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = pool()
        self.inception3a = InceptionBN(192, 64, 64, 64, 64, 96, "avg", 32)
        self.inception3b = InceptionBN(256, 64, 64, 96, 64, 96, "avg", 64)
        self.inception3c = InceptionBN(320, 0, 128, 160, 64, 96, "max", 0, stride=2)
        self.inception4a = InceptionBN(576, 224, 64, 96, 96, 128, "avg", 128)
        self.inception4b = InceptionBN(576, 192, 96, 128, 96, 128, "avg", 128)
        self.inception4c = InceptionBN(576, 160, 128, 160, 128, 160, "avg", 128)
        self.inception4d = InceptionBN(608, 96, 128, 192, 160, 192, "avg", 128)
        self.inception4e = InceptionBN(608, 0, 128, 192, 192, 256, "max", 0, stride=2)
        self.inception5a = InceptionBN(1056, 352, 192, 320, 160, 224, "avg", 128)
        self.inception5b = InceptionBN(1024, 352, 192, 320, 192, 224, "max", 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the table's 7x7/1 average pool at 224
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))  # (B, 64, 56, 56)
        x = self.conv3(self.conv2(x))  # (B, 192, 56, 56)
        x = self.maxpool2(x)  # (B, 192, 28, 28)
        x = self.inception3a(x)  # (B, 256, 28, 28)
        x = self.inception3b(x)  # (B, 320, 28, 28)
        x = self.inception3c(x)  # (B, 576, 14, 14)
        x = self.inception4a(x)  # (B, 576, 14, 14)
        x = self.inception4b(x)  # (B, 576, 14, 14)
        x = self.inception4c(x)  # (B, 608, 14, 14)
        x = self.inception4d(x)  # (B, 608, 14, 14)
        x = self.inception4e(x)  # (B, 1056, 7, 7)
        x = self.inception5a(x)  # (B, 1024, 7, 7)
        x = self.inception5b(x)  # (B, 1024, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 1024)
        return self.fc(self.dropout(x))  # (B, num_classes)


@register_model(input_size=224, min_input_size=7, aliases=("inception_v2",),
                paper="Ioffe & Szegedy 2015, Batch Normalization (BN-Inception)")
def bn_inception(num_classes: int = 1000, in_channels: int = 3, **options) -> BNInception:
    return BNInception(num_classes, in_channels, **options)
