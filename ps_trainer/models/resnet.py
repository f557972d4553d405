"""ImageNet ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition", Table 1).

Basic blocks (two 3x3) for 18/34 layers, bottlenecks (1x1, 3x3, 1x1 with 4x expansion) for
50/101/152, BatchNorm after every convolution, and projection shortcuts (1x1 conv + BN, option B)
only where the shape changes. Module names and shapes are torchvision's, so torchvision's ImageNet
weights load with strict=True.

Where the stride sits in a downsampling bottleneck is the one place the paper and torchvision differ.
The paper (and its Caffe models) put it on the first 1x1 convolution; torchvision puts it on the 3x3
("ResNet v1.5"), which costs more multiply-adds (ResNet-50: 4.1 vs 3.8 GMACs) for slightly better
accuracy. Parameters and state_dict keys are identical. The default follows the paper, so Table 1's
FLOPs row (1.8, 3.6, 3.8, 7.6, 11.3 x10^9) is reproduced; `resnet50_tv` (or
`resnet50(stride_in_1x1=False)`) is torchvision's layout and reproduces its outputs.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Fig. 2: two 3x3 convolutions and an identity (or projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = True):
        super().__init__()  # stride_in_1x1: no 1x1 here; accepted so both blocks build alike
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, planes, H/s, W/s)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """Fig. 5 right: 1x1 reduce, 3x3, 1x1 expand by 4; the stride on the 1x1 (paper) or the 3x3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = True):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, 4p, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, p, H/s1, W/s1)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, p, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4p, H/s, W/s)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers: list[int], num_classes: int = 1000, in_channels: int = 3,
                 stride_in_1x1: bool = True, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        make = partial(self._make_layer, block, stride_in_1x1=stride_in_1x1)
        self.layer1 = make(64, layers[0])  # conv2_x
        self.layer2 = make(128, layers[1], stride=2)  # conv3_x
        self.layer3 = make(256, layers[2], stride=2)  # conv4_x
        self.layer4 = make(512, layers[3], stride=2)  # conv5_x
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 ("Delving deep"), as the paper says
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # Goyal et al. 2017: each block starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1,
                    stride_in_1x1: bool = True) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:  # option B: project only here
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, stride_in_1x1)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, stride_in_1x1=stride_in_1x1) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112)
        x = self.maxpool(x)  # (B, 64, 56, 56)
        x = self.layer1(x)  # (B, 64e, 56, 56), e = block.expansion
        x = self.layer2(x)  # (B, 128e, 28, 28)
        x = self.layer3(x)  # (B, 256e, 14, 14)
        x = self.layer4(x)  # (B, 512e, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512e)
        return self.fc(x)  # (B, num_classes)


PAPER = "He et al. 2015, Deep Residual Learning"
_DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
           50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
           152: (Bottleneck, [3, 8, 36, 3])}


def _resnet(depth: int, num_classes: int, in_channels: int, **options) -> ResNet:
    block, layers = _DEPTHS[depth]
    return ResNet(block, layers, num_classes, in_channels, **options)


register = partial(register_model, input_size=224, min_input_size=1)


@register(paper=PAPER + " (18-layer)", reference="torchvision.models.resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(18, num_classes, in_channels, **options)


@register(paper=PAPER + " (34-layer)", reference="torchvision.models.resnet34")
def resnet34(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(34, num_classes, in_channels, **options)


@register(paper=PAPER + " (50-layer, stride in 1x1)")
def resnet50(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(50, num_classes, in_channels, **options)


@register(paper=PAPER + " (101-layer, stride in 1x1)")
def resnet101(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(101, num_classes, in_channels, **options)


@register(paper=PAPER + " (152-layer, stride in 1x1)")
def resnet152(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(152, num_classes, in_channels, **options)


@register(paper=PAPER + " (50-layer, torchvision v1.5)", reference="torchvision.models.resnet50")
def resnet50_tv(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(50, num_classes, in_channels, stride_in_1x1=False, **options)


@register(paper=PAPER + " (101-layer, torchvision v1.5)", reference="torchvision.models.resnet101")
def resnet101_tv(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(101, num_classes, in_channels, stride_in_1x1=False, **options)


@register(paper=PAPER + " (152-layer, torchvision v1.5)", reference="torchvision.models.resnet152")
def resnet152_tv(num_classes: int = 1000, in_channels: int = 3, **options) -> ResNet:
    return _resnet(152, num_classes, in_channels, stride_in_1x1=False, **options)
