"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions", Fig. 5).

An Inception module taken to its limit: every convolution after the first two is depthwise
separable (a 3x3 per-channel convolution, then a 1x1 across channels, no nonlinearity in between,
sec. 4.1), stacked in 14 modules with residual connections around all but the first and last.
Entry flow: conv 32 3x3/2, conv 64 3x3, then three modules (128, 256, 728 channels) that end in a
3x3/2 max-pool and carry a strided 1x1 projection as shortcut. Middle flow: 8 modules of three
ReLU-SeparableConv 728 with identity shortcuts. Exit flow: a 728 -> 1024 module, SeparableConv
1536, SeparableConv 2048, global average pooling, dropout 0.5 (sec. 4.3), logistic regression.
BatchNorm follows every convolution. 22,855,952 parameters, as the paper's Table 3 lists.

Module names are those of timm's `legacy_xception` (the Keras port), whose weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class SeparableConv2d(nn.Module):
    """Depthwise kxk (one filter per channel), then pointwise 1x1; no bias, BatchNorm follows."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding,
                               groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))  # (B, out_channels, H, W)


class Block(nn.Module):
    """`reps` x (ReLU, SeparableConv, BN), an optional 3x3/2 max-pool, plus a shortcut.

    `grow_first`: the first separable conv changes the width (entry flow) or the last does (exit).
    `rep` keeps the flat ReLU/conv/BN sequence of the reference so its indices (rep.1, rep.2, ...)
    name the same tensors.
    """

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True):
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        widths = ([in_channels] + [out_channels] * reps if grow_first
                  else [in_channels] * reps + [out_channels])
        layers: list[nn.Module] = []
        for i in range(reps):
            # The first ReLU must not overwrite the input: the shortcut still reads it.
            layers += [nn.ReLU(inplace=i > 0), SeparableConv2d(widths[i], widths[i + 1]),
                       nn.BatchNorm2d(widths[i + 1])]
        if not start_with_relu:  # right after the stem's ReLU
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))  # (B, C_out, H/s, W/s)
        return self.rep(x) + skip  # (B, C_out, H/s, W/s)


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # entry flow
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        # middle flow: blocks 4-11
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        # exit flow
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv2d(1536, 2048)
        self.bn4 = nn.BatchNorm2d(2048)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 32, 149, 149)
        x = self.relu(self.bn2(self.conv2(x)))  # (B, 64, 147, 147)
        x = self.block1(x)  # (B, 128, 74, 74)
        x = self.block2(x)  # (B, 256, 37, 37)
        x = self.block3(x)  # (B, 728, 19, 19)
        for i in range(4, 12):
            x = getattr(self, f"block{i}")(x)  # (B, 728, 19, 19)
        x = self.block12(x)  # (B, 1024, 10, 10)
        x = self.relu(self.bn3(self.conv3(x)))  # (B, 1536, 10, 10)
        x = self.relu(self.bn4(self.conv4(x)))  # (B, 2048, 10, 10)
        x = torch.flatten(self.global_pool(x), 1)  # (B, 2048)
        return self.fc(self.dropout(x))  # (B, num_classes)


@register_model(input_size=299, min_input_size=7, reference="timm legacy_xception",
                paper="Chollet 2017, Xception")
def xception(num_classes: int = 1000, in_channels: int = 3, **options) -> Xception:
    return Xception(num_classes, in_channels, **options)
