"""The model contract: inputs in their natural range, normalisation inside, logits out.

Every model takes inputs in the data's own range (images in [0, 1], see methods.md
"Conventions") and normalises internally with mean/std stored as buffers, so attacks act in
input space. ``forward`` returns logits of shape (B, K).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std as buffers (moved with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_dims: int):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be > 0, got {list(std)}")
        shape = (1, len(mean)) + (1,) * channel_dims
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def check_image_classifier(name: str, in_shape, num_classes: int) -> tuple:
    """``in_shape`` as a tuple, checked to be (3, H, W) RGB images, and ``num_classes`` >= 1;
    ValueError naming the model otherwise (the CIFAR-form models share this)."""
    in_shape = tuple(in_shape)
    if len(in_shape) != 3 or in_shape[0] != 3 or min(in_shape[1:]) < 1:
        raise ValueError(f"{name} expects inputs of shape (3, H, W), got {in_shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return in_shape


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel (or DataParallel) wrapper.

    Attacks run on the unwrapped module: their input-gradient passes must not trigger DDP's
    gradient synchronisation, which belongs to the training backward pass only.
    """
    return getattr(model, "module", model)
