"""A small MLP for flat feature vectors (the ``synthetic`` test data)."""
from __future__ import annotations

import math

import torch
from torch import nn

from distfair.models._base import Normalize


class MLP(nn.Module):
    """Normalise (one scalar mean/std), flatten, one hidden ReLU layer, linear head.

    Input any shape (B, ...) in the data's range; logits (B, K).
    """

    def __init__(self, *, num_classes: int, in_shape: tuple, hidden: int = 32, mean: float = 0.5,
                 std: float = 0.25):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.normalize = Normalize([mean], [std], channel_dims=0)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
