"""PreAct-ResNet18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The architecture of the Sy-FAR CIFAR protocol (Sy-FAR §5, Table 1) and of FAAL/SpecNorm.
Input (B, 3, 32, 32) in [0, 1], normalised inside with the CIFAR mean/std; logits (B, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distfair.models._base import Normalize

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet18; ``width`` scales the channel counts (64 is the standard model).

    ``feature_layer`` = ``"layers"``: the residual stages, output (B, 8*width, H/8, W/8) of the
    last block, before the final BN and ReLU (the features FERD's information bottleneck
    hooks, Eq. 4).
    """

    feature_layer = "layers"

    def __init__(self, *, num_classes: int, in_shape: tuple, width: int = 64):
        super().__init__()
        if len(in_shape) != 3 or in_shape[0] != 3:
            raise ValueError(f"preact_resnet18 expects inputs of shape (3, H, W), got {tuple(in_shape)}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD, channel_dims=2)
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2 ** i
            for s in (stride, 1):
                layers.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
