"""Inception v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision").

299x299 inputs; a stem of plain 3x3 convolutions, then three kinds of Inception module at three grid
sizes: 35x35 modules (Fig. 5), 17x17 modules whose 7x7 receptive fields are factorized into 1x7 and
7x1 convolutions (Fig. 6, n=7), and 8x8 modules with expanded 1x3 | 3x1 filter banks (Fig. 7),
joined by grid-reduction modules that stride a convolution beside a pooling (Fig. 10). One auxiliary
classifier, with BatchNorm, sits on the last 17x17 module (sec. 4 and 7). Training uses label
smoothing 0.1 (sec. 7), which `ModelSpec.label_smoothing` carries to `training_loss`.

The layers are those of the authors' released model (TF-slim `inception_v3`, ported by torchvision),
whose state_dict loads torchvision's ImageNet weights with strict=True. Where it differs from the
paper's Table 1 outline: the 35x35 modules keep a 1x1 -> 5x5 branch beside the double 3x3 one, and
the stem's 71x71x80 row is a 1x1 convolution to 80 followed by a 3x3 to 192 and a 3x3/2 max-pool.
Module names (`Conv2d_1a_3x3`, `Mixed_5b`, `AuxLogits`, ...) are TF-slim's scope names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .outputs import AuxOutputs
from .registry import register_model


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)  # TF's epsilon, so ported weights match

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def conv(cin: int, cout: int, kernel, padding=0, stride: int = 1) -> BasicConv2d:
    return BasicConv2d(cin, cout, kernel_size=kernel, padding=padding, stride=stride)


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 (Fig. 5): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = conv(in_channels, 64, 1)
        self.branch5x5_1 = conv(in_channels, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.branch_pool = conv(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # (B, 64, 35, 35)
        b5 = self.branch5x5_2(self.branch5x5_1(x))  # (B, 64, 35, 35)
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 96, 35, 35)
        bp = self.branch_pool(_avg_pool_3x3(x))  # (B, pool_features, 35, 35)
        return torch.cat([b1, b5, b3, bp], 1)  # (B, 224 + pool_features, 35, 35)


class InceptionB(nn.Module):
    """35x35 -> 17x17 grid reduction (Fig. 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool 3x3/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = conv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)  # (B, 384, 17, 17)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 96, 17, 17)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, C, 17, 17)
        return torch.cat([b3, bd, bp], 1)  # (B, 480 + C, 17, 17)


class InceptionC(nn.Module):
    """17x17 (Fig. 6, n=7): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x2 | avg-pool -> 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = conv(in_channels, 192, 1)
        self.branch7x7_1 = conv(in_channels, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(in_channels, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # (B, 192, 17, 17)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))  # (B, 192, 17, 17)
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)  # (B, 192, 17, 17) after the last
        bp = self.branch_pool(_avg_pool_3x3(x))  # (B, 192, 17, 17)
        return torch.cat([b1, b7, bd, bp], 1)  # (B, 768, 17, 17)


class InceptionD(nn.Module):
    """17x17 -> 8x8 grid reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool 3x3/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = conv(in_channels, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(in_channels, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))  # (B, 320, 8, 8)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 768, 8, 8)
        return torch.cat([b3, b7, bp], 1)  # (B, 320 + 192 + 768, 8, 8)


class InceptionE(nn.Module):
    """8x8 (Fig. 7): 1x1 | 1x1 -> (1x3 | 3x1) | 1x1 -> 3x3 -> (1x3 | 3x1) | avg-pool -> 1x1."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = conv(in_channels, 320, 1)
        self.branch3x3_1 = conv(in_channels, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(in_channels, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # (B, 320, 8, 8)
        t = self.branch3x3_1(x)  # (B, 384, 8, 8)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)  # (B, 768, 8, 8)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))  # (B, 384, 8, 8)
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)  # (B, 768, 8, 8)
        bp = self.branch_pool(_avg_pool_3x3(x))  # (B, 192, 8, 8)
        return torch.cat([b1, b3, bd, bp], 1)  # (B, 2048, 8, 8)


class InceptionAux(nn.Module):
    """avg-pool 5x5/3, 1x1 conv 128, 5x5 conv 768, fc: the BN-auxiliary classifier of sec. 7."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv0 = conv(in_channels, 128, 1)
        self.conv1 = conv(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)  # (B, 768, 5, 5)
        x = self.conv1(self.conv0(x))  # (B, 768, 1, 1)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 768)
        return self.fc(x)  # (B, num_classes)


class Inception3(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 transform_input: bool = False, dropout: float = 0.2):
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = conv(in_channels, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # TF-slim's keep probability 0.8
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():  # TF-slim's truncated normals, smaller at the aux head's end
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-2, b=2)

    def forward(self, x: torch.Tensor):
        if self.transform_input:  # ImageNet-normalized input -> the [-1, 1] range TF models expect
            x = torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                           x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                           x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = self.maxpool1(x)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = self.maxpool2(x)  # (B, 192, 35, 35)
        x = self.Mixed_5b(x)  # (B, 256, 35, 35)
        x = self.Mixed_5c(x)  # (B, 288, 35, 35)
        x = self.Mixed_5d(x)  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6b(x)  # (B, 768, 17, 17)
        x = self.Mixed_6c(x)  # (B, 768, 17, 17)
        x = self.Mixed_6d(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(x)  # (B, 768, 17, 17)
        with_aux = self.training and self.AuxLogits is not None
        aux = self.AuxLogits(x) if with_aux else None  # (B, num_classes)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7b(x)  # (B, 2048, 8, 8)
        x = self.Mixed_7c(x)  # (B, 2048, 8, 8)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 2048)
        x = self.fc(self.dropout(x))  # (B, num_classes)
        return AuxOutputs(x, (aux,)) if with_aux else x


# aux_weight: the paper gives none; 0.4 is TF-slim's training script's weight for AuxLogits.
@register_model(input_size=299, min_input_size=75, min_train_input_size=299, aux_heads=1,
                aux_weight=0.4, label_smoothing=0.1, reference="torchvision.models.inception_v3",
                paper="Szegedy et al. 2015, Rethinking the Inception Architecture")
def inception_v3(num_classes: int = 1000, in_channels: int = 3, **options) -> Inception3:
    return Inception3(num_classes, in_channels, **options)
