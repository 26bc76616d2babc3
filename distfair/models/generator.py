"""The label-conditioned image generator of data-free distillation (FERD and its baselines).

FERD (paper 002, §"Non-Robust Feature Suppression for Balanced Representations", Eq. 8-9)
trains a generator G(z, y) that synthesises samples of a requested class y from noise z; its
architecture is the one of DeepInversion's / Fast's data-free generators (Yin et al., CVPR
2020; Fang et al., "Up to 100x Faster Data-Free Knowledge Distillation", AAAI 2022; the
official FERD code uses the same with ``ngf`` 64), made label-conditional as FERD's
class-reweighted sampling (Eq. 1-2) needs:

    h = Linear([z, E(y)])  -> (2·width, ⌈H/4⌉, ⌈W/4⌉)
    BN -> ×2 upsample -> conv3x3 -> BN -> LeakyReLU(0.2)
       -> upsample to (H, W) -> conv3x3 -> BN -> LeakyReLU(0.2) -> conv3x3 -> C channels
    x = low + (high - low) · sigmoid(·)

z ~ N(0, I) of ``z_dim``; E a learnt label embedding of ``z_dim`` concatenated with z. The
output is squashed into the data's ``bounds`` (the sigmoid of Fast's generator, rescaled), so
every synthetic sample is a valid input (methods.md "Conventions"). The generator is always
used in train mode (its BatchNorm normalises with batch statistics, as in Fast).

Not a classifier: it is not registered in ``MODELS``; the data-free defenses build it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Generator(nn.Module):
    """G(z, y) -> x, a batch of synthetic inputs of shape ``in_shape`` in ``bounds``.

    Args (keyword-only):
        num_classes: K, the labels y take values in 0..K-1.
        in_shape: (C, H, W) of one input, e.g. (1, 8, 8) digits or (3, 32, 32) CIFAR.
        bounds: (low, high) valid input range; default (0, 1).
        z_dim: dimension of the noise z (and of the label embedding); default 100 (the
            official FERD code's ``gen_dim_z``).
        width: channel width (Fast's ``ngf``); default 64.

    Shapes: z (B, z_dim) float, y (B,) long; returns (B, C, H, W) with values in ``bounds``.
    B >= 2 in train mode (BatchNorm).
    """

    def __init__(self, *, num_classes: int, in_shape: tuple, bounds: tuple[float, float] = (0.0, 1.0),
                 z_dim: int = 100, width: int = 64):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in in_shape):
            raise ValueError(f"the generator synthesises images: in_shape must be (C, H, W), got {in_shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        for name, value in (("z_dim", z_dim), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must have low < high, got {tuple(bounds)}")
        channels, height, width_px = in_shape
        self.in_shape, self.num_classes, self.z_dim = in_shape, num_classes, z_dim
        self.low, self.high = low, high
        self.init_size = (math.ceil(height / 4), math.ceil(width_px / 4))
        hidden = 2 * width
        self.embed = nn.Embedding(num_classes, z_dim)
        self.project = nn.Linear(2 * z_dim, hidden * self.init_size[0] * self.init_size[1])
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(hidden),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.LeakyReLU(0.2),
            nn.Upsample(size=(height, width_px), mode="nearest"),
            nn.Conv2d(hidden, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        if y.shape != z.shape[:1]:
            raise ValueError(f"y must have shape ({z.shape[0]},), got {tuple(y.shape)}")
        h = self.project(torch.cat([z, self.embed(y)], dim=1))
        h = h.view(z.shape[0], -1, *self.init_size)
        return self.low + (self.high - self.low) * torch.sigmoid(self.blocks(h))
