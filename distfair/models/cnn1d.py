"""A 1-D CNN for MNIST-1D (Greydanus 2020): 40-sample signals, 10 classes."""
from __future__ import annotations

import torch
from torch import nn

from distfair.models._base import Normalize


class CNN1D(nn.Module):
    """Three strided 1-D conv layers and a linear head, as in the MNIST-1D reference CNN.

    Input (B, 1, L) with values in the dataset's bounds; output logits (B, num_classes).

    ``feature_layer`` = ``"features"``: the convolutional trunk, output (B, channels, L')
    after its last ReLU (the features FERD's information bottleneck hooks, Eq. 4).
    """

    feature_layer = "features"

    def __init__(self, *, num_classes: int, in_shape: tuple, channels: int = 25,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if len(in_shape) != 2 or in_shape[0] != 1:
            raise ValueError(f"cnn1d expects inputs of shape (1, L), got {tuple(in_shape)}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.normalize = Normalize([mean], [std], channel_dims=1)
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.head = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)).flatten(1))
