"""GoogLeNet, the Inception v1 network (Szegedy et al. 2014, "Going Deeper with Convolutions").

`googlenet` is the paper's network: convolutions with biases and ReLU but no BatchNorm, local
response normalization after the stem's first max-pool and after its 3x3 convolution (Fig. 3), true
5x5 convolutions in the third branch of every Inception module (Fig. 2b, Table 1), two auxiliary
classifiers on inception (4a) and (4d) (sec. 5: 5x5/3 average pool, 1x1 conv 128, fc 1024, 70%
dropout, fc) whose losses the trainer weights by 0.3, and 40% dropout before the classifier.
tests/test_models_papers.py recomputes Table 1 from this module.

`googlenet_tv` (`googlenet(torchvision_compat=True)`) is torchvision's variant, whose state_dict
loads torchvision's ImageNet weights with strict=True: BatchNorm (eps 1e-3) after every convolution
and no biases, no LRN, a 3x3 convolution in the "5x5" branch (pytorch/vision#906), a 2x2 last
max-pool, adaptive 4x4 pooling in the aux heads and 20% dropout. Module names are torchvision's in
both variants, so a reader can diff them.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .outputs import AuxOutputs
from .registry import register_model


class BasicConv2d(nn.Module):
    """Convolution, optional BatchNorm, ReLU: every weight layer of the network is one of these."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, **kwargs):
        super().__init__()
        # A bias is redundant in front of BatchNorm's shift, so only the paper variant has one.
        self.conv = nn.Conv2d(in_channels, out_channels, bias=not batch_norm, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Fig. 2b: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1, concatenated on channels.

    The arguments are the columns of Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, conv_block, kernel_5x5: int = 5):
        super().__init__()
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(conv_block(in_channels, ch3x3red, kernel_size=1),
                                     conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(conv_block(in_channels, ch5x5red, kernel_size=1),
                                     conv_block(ch5x5red, ch5x5, kernel_size=kernel_5x5,
                                                padding=kernel_5x5 // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv_block(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)  # (B, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)


class InceptionAux(nn.Module):
    """Sec. 5's auxiliary classifier: pool to 4x4, 1x1 conv 128, fc 1024, dropout, fc."""

    def __init__(self, in_channels: int, num_classes: int, conv_block, paper_pool: bool,
                 dropout: float = 0.7):
        super().__init__()
        self.paper_pool = paper_pool
        self.dropout = dropout
        self.conv = conv_block(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.paper_pool:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # (B, C, 4, 4) from the 14x14 grid at 224
        # Identity at 224 in the paper variant; keeps fc1's 2048 inputs on other input sizes.
        x = F.adaptive_avg_pool2d(x, 4)  # (B, C, 4, 4)
        x = self.conv(x)  # (B, 128, 4, 4)
        x = torch.flatten(x, 1)  # (B, 2048)
        x = F.relu(self.fc1(x), inplace=True)  # (B, 1024)
        x = F.dropout(x, self.dropout, training=self.training)  # (B, 1024)
        return self.fc2(x)  # (B, num_classes)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 torchvision_compat: bool = False, dropout: float | None = None,
                 dropout_aux: float = 0.7, transform_input: bool = False):
        super().__init__()
        tv = torchvision_compat
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        conv = partial(BasicConv2d, batch_norm=tv)
        inception = partial(Inception, conv_block=conv, kernel_5x5=3 if tv else 5)
        # The paper's 3x3/2 pools map 112 -> 56 -> 28 -> 14 -> 7 only when rounding up (Caffe's rule).
        pool = partial(nn.MaxPool2d, stride=2, ceil_mode=True)

        self.conv1 = conv(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = pool(3)
        self.lrn1 = nn.Identity() if tv else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.conv2 = conv(64, 64, kernel_size=1)  # Table 1's "#3x3 reduce" of the stem
        self.conv3 = conv(64, 192, kernel_size=3, padding=1)
        self.lrn2 = nn.Identity() if tv else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.maxpool2 = pool(3)

        self.inception3a = inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = pool(3)
        self.inception4a = inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = pool(2 if tv else 3)
        self.inception5a = inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = inception(832, 384, 192, 384, 48, 128, 128)

        aux = partial(InceptionAux, num_classes=num_classes, conv_block=conv, paper_pool=not tv,
                      dropout=dropout_aux)
        self.aux1 = aux(512) if aux_logits else None
        self.aux2 = aux(528) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7/1 average pool at 224
        self.dropout = nn.Dropout((0.2 if tv else 0.4) if dropout is None else dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights(tv)

    def _init_weights(self, tv: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if tv:  # torchvision's initialisation
                    nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
                else:  # the BVLC Caffe reference: Xavier weights, 0.2 conv biases keep ReLUs alive
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.constant_(m.bias, 0.2 if isinstance(m, nn.Conv2d) else 0.0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's ported weights expect inputs in [-1, 1]; this maps ImageNet-normalized
        # inputs there (same constants as torchvision, so the outputs match).
        x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x0, x1, x2), 1)

    def forward(self, x: torch.Tensor):
        if self.transform_input:
            x = self._transform_input(x)  # (B, 3, 224, 224)
        x = self.conv1(x)  # (B, 64, 112, 112)
        x = self.lrn1(self.maxpool1(x))  # (B, 64, 56, 56)
        x = self.conv2(x)  # (B, 64, 56, 56)
        x = self.lrn2(self.conv3(x))  # (B, 192, 56, 56)
        x = self.maxpool2(x)  # (B, 192, 28, 28)
        x = self.inception3a(x)  # (B, 256, 28, 28)
        x = self.inception3b(x)  # (B, 480, 28, 28)
        x = self.maxpool3(x)  # (B, 480, 14, 14)
        x = self.inception4a(x)  # (B, 512, 14, 14)
        with_aux = self.training and self.aux1 is not None
        aux1 = self.aux1(x) if with_aux else None  # (B, num_classes)
        x = self.inception4b(x)  # (B, 512, 14, 14)
        x = self.inception4c(x)  # (B, 512, 14, 14)
        x = self.inception4d(x)  # (B, 528, 14, 14)
        aux2 = self.aux2(x) if with_aux else None  # (B, num_classes)
        x = self.inception4e(x)  # (B, 832, 14, 14)
        x = self.maxpool4(x)  # (B, 832, 7, 7)
        x = self.inception5a(x)  # (B, 832, 7, 7)
        x = self.inception5b(x)  # (B, 1024, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 1024)
        x = self.fc(self.dropout(x))  # (B, num_classes)
        return AuxOutputs(x, (aux1, aux2)) if with_aux else x


PAPER = "Szegedy et al. 2014, Going Deeper with Convolutions"


@register_model(input_size=224, min_input_size=31, min_train_input_size=79, aux_heads=2,
                aux_weight=0.3, paper=PAPER + " (Table 1)", aliases=("inception_v1",))
def googlenet(num_classes: int = 1000, in_channels: int = 3, **options) -> GoogLeNet:
    """The paper's GoogLeNet: LRN, no BatchNorm, 5x5 branches, two aux heads (loss x0.3)."""
    return GoogLeNet(num_classes, in_channels, **options)


@register_model(input_size=224, min_input_size=15, aux_heads=2, aux_weight=0.3,
                paper=PAPER + " (torchvision variant)", reference="torchvision.models.googlenet")
def googlenet_tv(num_classes: int = 1000, in_channels: int = 3, **options) -> GoogLeNet:
    """torchvision's GoogLeNet (BatchNorm, 3x3 "5x5" branch); loads its ImageNet weights."""
    return GoogLeNet(num_classes, in_channels, torchvision_compat=True, **options)
