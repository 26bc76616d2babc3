"""The defense contract.

Lifecycle: the engine builds one defense per (configuration, seed) with the task's class
count and the training attack (already bound to the data's valid range). Before every
epoch it calls :meth:`Defense.start_epoch` (a no-op unless the defense needs a pass over the
training set, as SpecNorm does), then :meth:`Defense.loss` once per training batch with the
model in train mode. ``loss`` returns
the scalar to back-propagate and a dict of named components (detached) for logging. The
engine owns the optimiser, the schedule, the data order and DDP; a defense only says what
the per-batch objective is. Options are keyword-only ``__init__`` arguments with simple type
annotations: the config validator reads them from the signature.

Models passed to ``loss`` may be DDP-wrapped: run the training forward passes through
``model`` (so gradients synchronise) and generate attacks on ``unwrap_model(model)``.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import nn

from distfair.attacks import Attack


class Defense(abc.ABC):
    name: ClassVar[str]
    #: whether the defense needs a training attack (``attack:`` in the config)
    needs_attack: ClassVar[bool] = True

    def __init__(self, *, attack: Attack | None, num_classes: int):
        if self.needs_attack and attack is None:
            raise ValueError(f"defense {self.name!r} needs a training attack (set `attack:`)")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.attack = attack
        self.num_classes = num_classes

    def start_epoch(self, model: nn.Module, train_set, *, epoch: int, device: torch.device, batch_size: int,
                    generator: torch.Generator | None, rank: int = 0, world: int = 1) -> dict[str, float]:
        """Called before each training epoch with the plain (unwrapped) model. Per-epoch state
        (e.g. weights from the training set's robust confusion matrix) is computed here; under
        DDP every rank calls it, on its shard, and must reach the same state. Returns numbers
        to log with the epoch. Default: nothing."""
        return {}

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-batch objective. x: (B, ...) inputs in the data's range, y: (B,) labels."""


def check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")
