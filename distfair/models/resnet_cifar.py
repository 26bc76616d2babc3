"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition"), CIFAR variant.

The student of FERD (paper 002, "Experimental Settings") and of RSLAD: the CIFAR adaptation
of the ImageNet ResNet-18 (3x3 stem convolution with stride 1, no max-pool), BasicBlocks
[2, 2, 2, 2] with widths 64-128-256-512 (scaled by ``width``), global average pooling and a
linear head; about 11.17M parameters for 10 classes. Module names follow the reference
implementation RSLAD uses (``conv1``, ``bn1``, ``layer1``..``layer4``, ``linear``).
Input (B, 3, H, W) in [0, 1] (32x32 for CIFAR), normalised inside with the CIFAR mean/std;
logits (B, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distfair.models._base import Normalize, check_image_classifier
from distfair.models.preact_resnet import CIFAR_MEAN, CIFAR_STD


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()  # empty = identity, as in the reference state dicts
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images; ``width`` scales the channel counts (64 is the standard model).

    ``feature_layer`` = ``"layer4"``: the last convolutional stage, output (B, 8*width, H/8, W/8)
    after its final ReLU (the features FERD's information bottleneck hooks, Eq. 4).
    """

    feature_layer = "layer4"

    def __init__(self, *, num_classes: int, in_shape: tuple, width: int = 64):
        super().__init__()
        in_shape = check_image_classifier("resnet18", in_shape, num_classes)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD, channel_dims=2)
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2 ** i
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(in_planes, planes, stride),
                                                           BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
