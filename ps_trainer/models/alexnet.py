"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep CNNs", Fig. 2).

`alexnet` is the paper's network: five convolutions with 96, 256, 384, 384 and 256 filters
(11x11/4, 5x5, 3x3, 3x3, 3x3), local response normalization (k=2, n=5, alpha=1e-4, beta=0.75) after
the first two, overlapping 3x3/2 max-pooling after both normalizations and the fifth convolution,
then fc 4096, fc 4096, fc 1000 with 50% dropout in the first two. Convolutions 2, 4 and 5 only see
the kernel maps on their own GPU (sec. 3.5: `groups=2`), which is how the paper's 60M parameters
come out (34,848 / 307,200 / 884,736 / 663,552 / 442,368 convolution weights).
`two_gpu=False` connects every layer to all channels of the previous one.

`alexnet_tv` is torchvision's AlexNet, the single-GPU "one weird trick" variant (Krizhevsky 2014:
64, 192, 384, 256, 256 filters, no LRN), whose state_dict loads torchvision's ImageNet weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .registry import register_model


class AlexNet(nn.Module):
    """The 2012 network. The paper's 224x224 input gives 55x55 maps only with 2 pixels of padding."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, two_gpu: bool = True,
                 dropout: float = 0.5):
        super().__init__()
        g = 2 if two_gpu else 1
        # torch divides alpha by n inside LocalResponseNorm; the paper's formula does not.
        lrn = lambda: nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # noqa: E731
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 96, 11, stride=4, padding=2)),  # (B, 96, 55, 55)
            ("relu1", nn.ReLU(inplace=True)), ("norm1", lrn()),
            ("pool1", nn.MaxPool2d(3, stride=2)),  # (B, 96, 27, 27)
            ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=g)),  # (B, 256, 27, 27)
            ("relu2", nn.ReLU(inplace=True)), ("norm2", lrn()),
            ("pool2", nn.MaxPool2d(3, stride=2)),  # (B, 256, 13, 13)
            ("conv3", nn.Conv2d(256, 384, 3, padding=1)),  # (B, 384, 13, 13): crosses GPUs
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=g)),  # (B, 384, 13, 13)
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=g)),  # (B, 256, 13, 13)
            ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, stride=2)),  # (B, 256, 6, 6)
        ]))
        self.avgpool = nn.AdaptiveAvgPool2d(6)  # identity at 224; lets smaller inputs through
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        # Sec. 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the fully-connected
        # layers (positive inputs for the ReLUs early on), 0 elsewhere.
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                ones = name.endswith(("conv2", "conv4", "conv5", "fc6", "fc7", "fc8"))
                nn.init.constant_(m.bias, 1.0 if ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, 6, 6)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 9216)
        return self.classifier(x)  # (B, num_classes)


class AlexNetTV(nn.Module):
    """torchvision's layout: `features.N` / `classifier.N` indices as in torchvision/models/alexnet.py."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (B, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # (B, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, 6, 6)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 9216)
        return self.classifier(x)  # (B, num_classes)


@register_model(input_size=224, min_input_size=63,
                paper="Krizhevsky et al. 2012, ImageNet Classification with Deep CNNs")
def alexnet(num_classes: int = 1000, in_channels: int = 3, **options) -> AlexNet:
    """The paper's two-GPU AlexNet with LRN (60,965,224 parameters)."""
    return AlexNet(num_classes, in_channels, **options)


@register_model(input_size=224, min_input_size=63, reference="torchvision.models.alexnet",
                paper="Krizhevsky 2014, One weird trick (torchvision's AlexNet)")
def alexnet_tv(num_classes: int = 1000, in_channels: int = 3, **options) -> AlexNetTV:
    """torchvision's single-GPU AlexNet (61,100,840 parameters); loads its ImageNet weights."""
    return AlexNetTV(num_classes, in_channels, **options)
