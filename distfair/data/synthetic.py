"""A tiny synthetic classification set for tests: Gaussian blobs clipped to [0, 1]."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from distfair.data._base import (MAX_GENERATED_SAMPLES, MAX_GENERATED_VALUES, DataBundle, check_at_most,
                                 check_fraction, stratified_split)


def synthetic(*, num_samples: int = 240, num_classes: int = 3, dim: int = 8, noise: float = 0.15,
              split_seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.25) -> DataBundle:
    """``num_samples`` points in [0, 1]^dim, class centres drawn from ``split_seed``.

    Balanced classes; points are centre + N(0, noise²) clipped to [0, 1]. Deterministic in
    ``split_seed``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if num_samples < 4 * num_classes:
        raise ValueError(f"num_samples must be >= 4 * num_classes = {4 * num_classes}, got {num_samples}")
    check_at_most("num_samples", num_samples, MAX_GENERATED_SAMPLES)
    check_at_most("num_samples * dim", num_samples * dim, MAX_GENERATED_VALUES)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    g = torch.Generator().manual_seed(split_seed)
    centres = 0.2 + 0.6 * torch.rand(num_classes, dim, generator=g)
    y = torch.arange(num_samples) % num_classes
    x = (centres[y] + noise * torch.randn(num_samples, dim, generator=g)).clamp(0.0, 1.0)
    test_idx, val_idx, train_idx = stratified_split(y.numpy(), [test_fraction, val_fraction], split_seed)

    def part(idx):
        return TensorDataset(x[idx], y[idx])

    return DataBundle(part(train_idx), part(val_idx), part(test_idx), num_classes=num_classes,
                      in_shape=(dim,), bounds=(0.0, 1.0), class_names=[str(i) for i in range(num_classes)])
