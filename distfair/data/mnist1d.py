"""MNIST-1D (Greydanus 2020): 40-sample 1-D signals, 10 classes, generated offline.

Generated with ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads first;
methods.md "Offline data").
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import TensorDataset

from distfair.data._base import MAX_GENERATED_SAMPLES, DataBundle, check_at_most, check_fraction, stratified_split


def mnist1d(*, num_samples: int = 5000, generator_seed: int = 42, split_seed: int = 0,
            val_fraction: float = 0.1) -> DataBundle:
    """MNIST-1D with its own 80/20 train/test split; validation carved from train.

    ``generator_seed`` is MNIST-1D's own data seed (42 reproduces the published set).
    The signals are not bounded by construction, so the valid input range for attacks
    (``bounds``) is the observed [min, max] of MNIST-1D's *training* portion (our train and
    validation parts): the test set influences nothing, as for model selection (methods.md
    "Conventions"). A test signal outside that range is not altered by the loader, but an
    attack clamps its adversarial example into the range, as it would any input.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < 100:
        raise ValueError(f"num_samples must be >= 100, got {num_samples}")
    check_at_most("num_samples", num_samples, MAX_GENERATED_SAMPLES)
    check_fraction("val_fraction", val_fraction)
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = generator_seed
    # make_dataset reseeds the global `random` and NumPy RNGs (mnist1d.utils.set_seed):
    # restore them, so building the data does not override the run's seed_everything().
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = torch.tensor(np.asarray(raw["x"]), dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)
    y = torch.tensor(np.asarray(raw["y"]), dtype=torch.long)
    x_test = torch.tensor(np.asarray(raw["x_test"]), dtype=torch.float32).unsqueeze(1)
    y_test = torch.tensor(np.asarray(raw["y_test"]), dtype=torch.long)
    val_idx, train_idx = stratified_split(y.numpy(), [val_fraction], split_seed)
    low, high = float(x.min()), float(x.max())  # training data only: never x_test
    return DataBundle(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]),
                      TensorDataset(x_test, y_test), num_classes=10, in_shape=(1, x.shape[-1]),
                      bounds=(low, high), class_names=[str(i) for i in range(10)])
