"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
CIFAR variant.

A student of FERD (paper 002, "Experimental Settings"). The common CIFAR adaptation of the
ImageNet network: the first convolution and the second inverted-residual stage use stride 1
instead of 2, so a 32x32 image ends at 4x4. Inverted residual settings (t, c, n, s) =
(1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1); a 1x1
convolution to 1280 channels, global average pooling and a linear head; ReLU6 and linear
bottlenecks as in the paper (no expansion convolution when t = 1; a residual connection only
where stride is 1 and the channel count is kept). About 2.24M parameters for 10 classes.
``width_mult`` scales every layer (channels rounded to multiples of 8) except the last
convolution, which is never made narrower than 1280 (the paper, §6.1).
Input (B, 3, H, W) in [0, 1] (32x32 for CIFAR), normalised inside with the CIFAR mean/std;
logits (B, K).
"""
from __future__ import annotations

import torch
from torch import nn

from distfair.models._base import Normalize, check_image_classifier
from distfair.models.preact_resnet import CIFAR_MEAN, CIFAR_STD

#: (expansion t, output channels c, repeats n, first stride s); stage 2's s is 1 for CIFAR
CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def _make_divisible(value: float, divisor: int = 8) -> int:
    """The channel count nearest ``value`` that is a multiple of ``divisor``, never below 90%
    of ``value`` (the rounding of the reference implementation)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (t > 1), 3x3 depthwise, linear 1x1 projection; residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers = [] if expand == 1 else [_conv_bn(in_ch, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
                   _conv_bn(hidden, out_ch, 1, relu=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 images; ``width_mult`` scales the channel counts (1.0 standard).

    ``feature_layer`` = ``"features"``: the whole convolutional trunk, whose last layer is the
    1x1 convolution to 1280 channels; output (B, 1280, H/8, W/8) after its BN and ReLU6 (the
    features FERD's information bottleneck hooks, Eq. 4).
    """

    feature_layer = "features"

    def __init__(self, *, num_classes: int, in_shape: tuple, width_mult: float = 1.0):
        super().__init__()
        in_shape = check_image_classifier("mobilenet_v2", in_shape, num_classes)
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD, channel_dims=2)
        in_ch = _make_divisible(STEM_CHANNELS * width_mult)
        last_ch = _make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(3, in_ch, 3, stride=1)]  # stride 1 for CIFAR (ImageNet: 2)
        for t, c, n, s in CIFAR_SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(_conv_bn(in_ch, last_ch, 1))
        self.features = nn.Sequential(*layers)
        # PyTorch's default initialisation, as in the CIFAR code RSLAD and FERD build on
        # (torchvision's fan-out init shrinks activations through 17 depthwise blocks, so an
        # untrained model in eval mode gives logits of order 1e-9)
        self.classifier = nn.Linear(last_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.normalize(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
