"""scikit-learn's 8x8 handwritten digits: 1,797 real images, 10 classes, shipped offline."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from distfair.data._base import DataBundle, check_fraction, stratified_split


def digits(*, split_seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> DataBundle:
    """Stratified test / validation / train split of ``load_digits``; pixels scaled to [0, 1].

    ``test_fraction`` and ``val_fraction`` are fractions of the whole set; validation is
    carved from the non-test part.
    """
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.long)
    test_idx, val_idx, train_idx = stratified_split(y.numpy(), [test_fraction, val_fraction], split_seed)

    def part(idx):
        return TensorDataset(x[idx], y[idx])

    return DataBundle(part(train_idx), part(val_idx), part(test_idx), num_classes=10,
                      in_shape=(1, 8, 8), bounds=(0.0, 1.0), class_names=[str(i) for i in range(10)])
