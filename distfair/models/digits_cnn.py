"""A small CNN for 8x8 single-channel digits (scikit-learn ``load_digits``)."""
from __future__ import annotations

import torch
from torch import nn

from distfair.models._base import Normalize


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks with BatchNorm, one max-pool, a linear head.

    Input (B, 1, 8, 8) in [0, 1]; output logits (B, num_classes). About 25k parameters:
    a PGD training epoch over ~1.1k digits takes a second or two on one CPU core.

    ``feature_layer`` = ``"features"``: the convolutional trunk, output (B, width, 4, 4) after
    its max-pool (the features FERD's information bottleneck hooks, Eq. 4).
    """

    feature_layer = "features"

    def __init__(self, *, num_classes: int, in_shape: tuple, width: int = 32,
                 mean: float = 0.3, std: float = 0.4):
        super().__init__()
        if tuple(in_shape) != (1, 8, 8):
            raise ValueError(f"digits_cnn expects inputs of shape (1, 8, 8), got {tuple(in_shape)}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.normalize = Normalize([mean], [std], channel_dims=2)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)).flatten(1))
