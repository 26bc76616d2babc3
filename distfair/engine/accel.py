"""The fast training path: mixed precision, memory format, compilation, fused optimisers and a
device-resident training set. Every switch is a ``train`` key and every default keeps the
plain fp32 path (the numbers of runs made before these switches existed do not move).

What each does, and why it is safe where it is applied:

- ``precision: bf16`` runs the defense's whole training step (``Defense.train_step``: the
  attack's inner maximisation, the outer loss, backward and the optimiser step) under
  ``torch.autocast(dtype=bfloat16)``. The parameters, the optimiser state and the attack's
  iterate x_adv stay fp32: autocast casts the inputs of matrix products and convolutions to
  bf16 and keeps reductions, softmax and cross-entropy in fp32. bf16 has fp32's exponent range,
  so no loss scaling is needed (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning
  Training", 2019). The attack's input gradients are fp32 tensors whose values pass through
  bf16 products; PGD (Madry et al., ICLR 2018, §2.1) only uses their sign, which bf16's 8-bit
  mantissa changes only for components near zero. ``scripts/bench_gpu.py
  --attack-precision`` measures this (sign agreement, the loss each attack reaches, time) so
  the choice can be checked on each card. Evaluation never runs under autocast: the validation
  counts, the validation pass and the test evaluation call the plain model outside the step,
  in fp32, so a reported robust accuracy does not depend on how the model was trained fast.
- ``channels_last`` stores the weights of a model with 2-D convolutions as NHWC, the layout
  tensor-core convolutions use (without it cuDNN transposes at every layer). The values are
  the same; only summation order inside the kernels may differ.
- ``compile`` trains through ``torch.compile(model)``; the checkpoints and the evaluations use
  the plain module (same parameters), so compiled kernels never touch a reported number.
- ``fused_optimizer`` builds SGD/Adam/AdamW with ``fused=True`` where this PyTorch has fused
  kernels for the device, else ``foreach=True``: one kernel for all parameters instead of one
  per parameter tensor.
- ``data_on_device`` holds a tensor training set on the training device and draws each batch
  by indexing, in the order of the same ``DistributedSampler`` (seed, epoch, rank) the
  DataLoader uses, so the batches, and the global RNG stream, are exactly the DataLoader's.

Plain PyTorch: no Ray, no MLflow, no configuration import (the switches arrive as the
resolved ``train`` block; missing keys read as their defaults).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler, Subset, TensorDataset

PRECISIONS = ("fp32", "bf16")
#: the defaults of the ``train`` switches (the configuration schema declares the same)
DEFAULTS = {"precision": "fp32", "channels_last": False, "compile": False, "fused_optimizer": False,
            "data_on_device": False}


def option(train: dict, key: str):
    """``train[key]``, or its default for a block resolved before the key existed."""
    value = train.get(key)
    return DEFAULTS[key] if value is None else value


# ------------------------------------------------------------------------------ precision
def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a null context for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"train.precision: bf16: {torch.cuda.get_device_name(device)} has no bf16 arithmetic; "
                         f"use fp32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# -------------------------------------------------------------------------- memory format
def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(model: nn.Module) -> bool:
    """Convert ``model``'s 4-D parameters and buffers to channels_last, in place (the
    parameter objects stay the same, so an optimiser built before or after sees them).
    Returns False, leaving the model as it is, when it has no 2-D convolution."""
    if not has_conv2d(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


# ---------------------------------------------------------------------------- compilation
def compiled(model: nn.Module, **kwargs) -> nn.Module:
    """``torch.compile(model)``: a wrapper sharing ``model``'s parameters. The engine trains
    through it and keeps the plain module for checkpoints and evaluation."""
    return torch.compile(model, **kwargs)


# ------------------------------------------------------------------------------ optimiser
def optimizer_kwargs(params: list, fused: bool) -> dict:
    """Extra keywords for SGD/Adam/AdamW: ``fused=True`` where this PyTorch has fused kernels
    for the parameters' device, else ``foreach=True`` where it has multi-tensor kernels, else
    nothing. ``fused=False``: nothing (PyTorch's own default)."""
    if not fused:
        return {}
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    devices = {t.device.type for t in tensors}
    if len(devices) == 1 and all(t.is_floating_point() for t in tensors):
        (kind,) = devices
        if kind in _get_fused_kernels_supported_devices():
            return {"fused": True}
        if kind in _get_foreach_kernels_supported_devices():
            return {"foreach": True}
    return {}


# ------------------------------------------------------------------- device-resident data
def dataset_tensors(dataset) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a ``TensorDataset`` (through any ``Subset`` chain), indexed as the
    dataset would be; None for any other dataset (its items may be computed per access, as
    CIFAR's random crop and flip are, which a copy held on the device would freeze)."""
    indices = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorDataset):
        return None
    return tuple(t if indices is None else t[indices] for t in dataset.tensors)


class DeviceLoader:
    """The training batches of one rank drawn from tensors held on ``device``.

    Same batches, same order and same types as ``DataLoader(dataset, batch_size,
    sampler=sampler, drop_last=drop_last)`` with the default collate (a list of stacked
    tensors): the indices come from the same ``DistributedSampler`` (the engine calls its
    ``set_epoch``), one copy to the device per epoch, then every batch is an index on the
    device (no host transfer, no collation). Like the DataLoader's iterator, each pass draws
    one int64 from the global CPU RNG, so everything drawn after it is unchanged too."""

    def __init__(self, dataset, *, sampler: DistributedSampler, batch_size: int, drop_last: bool,
                 device: torch.device | str):
        tensors = dataset_tensors(dataset)
        if tensors is None:
            raise ValueError(f"{type(dataset).__name__} is not a tensor dataset")
        # default_collate's result for the items, built in one piece (a TensorDataset item is
        # a tuple of its tensors' rows, which default_collate stacks back)
        self.tensors = tuple(t.to(device) for t in tensors)
        self.dataset, self.sampler, self.batch_size, self.drop_last = dataset, sampler, batch_size, drop_last
        self.device = torch.device(device)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_()       # the DataLoader iterator's base-seed draw
        order = torch.tensor(list(self.sampler), dtype=torch.long).to(self.device, non_blocking=True)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [t[idx] for t in self.tensors]


# ------------------------------------------------------------------------------ the whole
def prepare_model(model: nn.Module, train: dict, log: Callable[[str], None] = lambda msg: None) -> None:
    """Apply ``train.channels_last`` to the model in place (before the optimiser is built)."""
    if option(train, "channels_last") and not to_channels_last(model):
        log("train.channels_last: the model has no 2-D convolution; its layout is left as it is")


def describe(train: dict) -> str:
    """One line naming the switches that differ from the defaults ('' when none do)."""
    changed = [f"{k}={option(train, k)}" for k in DEFAULTS if option(train, k) != DEFAULTS[k]]
    return ", ".join(changed)
