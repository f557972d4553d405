"""Small CNNs for CPU work and teaching: what the embedded default, the tests and the simulator train.

`digits_cnn` is sized for scikit-learn's 8x8 digits (1 channel): three 3x3 convolutions with
BatchNorm (Ioffe & Szegedy 2015), so the BatchNorm-statistics path of the parameter server is
exercised by the default run, then global average pooling and one linear classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, width),  # (B, w, 8, 8)
            conv_bn_relu(width, 2 * width),  # (B, 2w, 8, 8)
            nn.MaxPool2d(2),  # (B, 2w, 4, 4)
            conv_bn_relu(2 * width, 2 * width),  # (B, 2w, 4, 4)
            nn.AdaptiveAvgPool2d(1),  # (B, 2w, 1, 1)
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))  # (B, num_classes)


@register_model(input_size=8, min_input_size=2, in_channels=1, num_classes=10,
                paper="small CNN for 8x8 digits")
def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    return DigitsCNN(num_classes, in_channels, width)


@register_model(input_size=8, min_input_size=2, in_channels=1, num_classes=10,
                paper="small CNN for 8x8 digits, width 8: the staleness harness's default")
def digits_cnn_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """digits_cnn at a quarter of the width (3.8K parameters, ~2.4 ms per step of 32 on one CPU
    thread against ~10 ms): the simulator runs a sweep cell in seconds."""
    return DigitsCNN(num_classes, in_channels, width=8)
