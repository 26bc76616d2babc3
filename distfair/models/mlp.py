"""A small MLP for flat feature vectors (the ``synthetic`` test data)."""
from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, one hidden ReLU layer, linear head. Input any shape (B, ...); logits (B, K)."""

    def __init__(self, *, num_classes: int, in_shape: tuple, hidden: int = 32):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
