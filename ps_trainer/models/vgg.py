"""VGG networks (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks", Table 1).

Configurations A-E: stacks of 3x3 convolutions (stride 1, padding 1) with ReLU, five 2x2/2
max-pools, then fc 4096, fc 4096, fc 1000 with 50% dropout after the first two. A-LRN adds local
response normalization after the first convolution; C uses 1x1 convolutions in the last layer of
stages 3-5. The paper's Table 2 parameter counts (133, 133, 133, 134, 138, 144 million for A,
A-LRN, B, C, D, E) are reproduced in tests/test_models_papers.py.

torchvision implements A, B, D and E as vgg11/13/16/19 with the same layers, so these are
interchangeable with it: same `features.N` / `classifier.N` names, same parameter counts. The `_bn`
variants add BatchNorm after every convolution (not in the paper; torchvision's, for its weights).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .registry import register_model

# An int is a 3x3 convolution with that many filters, (c, 1) a 1x1 one, "M" a 2x2/2 max-pool.
CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M",
          512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(config: list, in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "LRN":  # AlexNet's settings (sec. 3.1 of the VGG paper); torch divides alpha by n
            layers.append(nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0))
        else:
            out, k = v if isinstance(v, tuple) else (v, 3)
            layers.append(nn.Conv2d(channels, out, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, config: str, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        self.features = make_features(CONFIGS[config], in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d(7)  # identity at 224; lets 32x32 inputs through
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation (the paper pre-trained A instead)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 25088)
        return self.classifier(x)  # (B, num_classes)


PAPER = "Simonyan & Zisserman 2014, Very Deep ConvNets"
register = partial(register_model, input_size=224, min_input_size=32)


@register(paper=PAPER + " (config A)", reference="torchvision.models.vgg11")
def vgg11(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("A", num_classes, in_channels, **options)


@register(paper=PAPER + " (config A + BatchNorm)", reference="torchvision.models.vgg11_bn")
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("A", num_classes, in_channels, batch_norm=True, **options)


@register(paper=PAPER + " (config B)", reference="torchvision.models.vgg13")
def vgg13(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("B", num_classes, in_channels, **options)


@register(paper=PAPER + " (config B + BatchNorm)", reference="torchvision.models.vgg13_bn")
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("B", num_classes, in_channels, batch_norm=True, **options)


@register(paper=PAPER + " (config D)", reference="torchvision.models.vgg16")
def vgg16(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("D", num_classes, in_channels, **options)


@register(paper=PAPER + " (config D + BatchNorm)", reference="torchvision.models.vgg16_bn")
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("D", num_classes, in_channels, batch_norm=True, **options)


@register(paper=PAPER + " (config E)", reference="torchvision.models.vgg19")
def vgg19(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("E", num_classes, in_channels, **options)


@register(paper=PAPER + " (config E + BatchNorm)", reference="torchvision.models.vgg19_bn")
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, **options) -> VGG:
    return VGG("E", num_classes, in_channels, batch_norm=True, **options)
