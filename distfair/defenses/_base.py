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

Threat model: a defense that calls the configured training attack as is trains against that
attack's threat model, whatever it is. A defense that re-implements the inner maximisation
(TRADES' KL maximiser, Zhang et al. ICML 2019 Alg. 1, reused by SpecNorm/CSR) takes only ε and
the step schedule from the configured attack, so it must declare the perturbation sets it
implements in ``attack_norms`` (values of ``Attack.norm``). The constructor and the config
validator (``<file>: attack.name: ...``, before anything starts) refuse any other training
attack rather than silently training against a different threat model.
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
    #: threat models (``Attack.norm`` values) of the training attacks this defense honours;
    #: None: any, because ``loss`` calls the configured attack as is. A defense running its own
    #: inner maximisation declares the norms it implements (TRADES, SpecNorm: {"linf"}).
    attack_norms: ClassVar[frozenset[str] | None] = None

    def __init__(self, *, attack: Attack | None, num_classes: int):
        if self.needs_attack and attack is None:
            raise ValueError(f"defense {self.name!r} needs a training attack (set `attack:`)")
        problem = self.attack_problem(attack)
        if problem:
            raise ValueError(problem)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.attack = attack
        self.num_classes = num_classes

    @classmethod
    def attack_problem(cls, attack: Attack | None) -> str | None:
        """Why ``attack`` cannot be this defense's training attack (None if it can): its
        ``norm`` is not one of ``attack_norms``. Read by the config validator as well."""
        if attack is None or cls.attack_norms is None or attack.norm in cls.attack_norms:
            return None
        from distfair.attacks import ATTACKS

        allowed = " or ".join(repr(n) for n in sorted(cls.attack_norms))
        examples = ", ".join(name for name, kind in ATTACKS.items() if kind.norm in cls.attack_norms)
        return (f"defense {cls.name!r} runs its own inner maximisation for threat model {allowed} only and "
                f"would silently change the threat model of attack {attack.name!r} ({attack.norm!r}); "
                f"use a training attack with threat model {allowed}" + (f" (e.g. {examples})" if examples else ""))

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
