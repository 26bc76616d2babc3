"""WideResNet (Zagoruyko & Komodakis 2016, "Wide Residual Networks"), the robust-training form.

The teacher of FERD on CIFAR-10/100 (paper 002, "Experimental Settings"): WRN-34-10 as in the
TRADES and RSLAD code (pre-activation BasicBlocks, three stages of (depth - 4) / 6 blocks with
16k-32k-64k channels for k = ``widen_factor``, a 16-channel 3x3 stem, final BN-ReLU, global
average pooling, linear head); about 46.16M parameters for 10 classes. Module and parameter
names follow that code (``conv1``, ``block1``..``block3``, ``bn1``, ``fc``), except that the
TRADES class also builds an unused ``sub_block1``, which is left out here: drop its keys to
load such a checkpoint. ``dropout`` is applied between the two convolutions of each block.
Input (B, 3, H, W) in [0, 1] (32x32 for CIFAR), normalised inside with the CIFAR mean/std;
logits (B, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distfair.models._base import Normalize, check_image_classifier
from distfair.models.preact_resnet import CIFAR_MEAN, CIFAR_STD

#: the deepest WRN (6n + 4 layers): 25 times the paper's WRN-40
MAX_DEPTH = 1000


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus an identity or 1x1 conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                      bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in TRADES: when the shape changes, the shortcut takes the pre-activated input.
        # (Identity blocks always have stride 1: only a stage's first block changes shape.)
        act = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: ``n`` blocks, the first one changing width and stride (held in ``layer``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                    stride if i == 0 else 1, dropout) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 images (WRN-34-10 by default).

    ``feature_layer`` = ``"block3"``: the last convolutional stage, output
    (B, 64*widen_factor, H/4, W/4) taken before the final BN and ReLU (the features FERD's
    information bottleneck hooks, Eq. 4).
    """

    feature_layer = "block3"

    def __init__(self, *, num_classes: int, in_shape: tuple, depth: int = 34, widen_factor: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        in_shape = check_image_classifier("wide_resnet", in_shape, num_classes)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if depth > MAX_DEPTH:                # building 10**9 blocks would not end
            raise ValueError(f"depth must be <= {MAX_DEPTH}, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD, channel_dims=2)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # the TRADES initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
