"""The defense contract.

Lifecycle, for one (configuration, seed), on every DDP rank:

1. ``__init__(attack=..., num_classes=..., **options)``: the training attack (already bound to
   the data's valid range, or None) and the user options. Options are keyword-only
   ``__init__`` arguments with simple type annotations: the config validator reads them from
   the signature and builds the defense once to check them (nothing else is called then).
2. :meth:`Defense.setup` once, with a :class:`DefenseContext`: the data spec, device, rank,
   world size, seeded generators and the resolved ``references`` the configuration names (a
   teacher checkpoint, ...). Build extra networks and their optimisers here.
3. On resume only: :meth:`Defense.load_state_dict` with what :meth:`Defense.state_dict`
   returned on this rank at the end of the last finished epoch, before the next epoch starts.
4. Every epoch: :meth:`Defense.start_epoch` (a per-epoch pass over the training set, as
   SpecNorm's), then :meth:`Defense.train_step` once per batch of
   :meth:`Defense.batches` with the model in train mode; after the epoch the engine steps its
   schedule, validates (adding the defense's own numbers, :meth:`Defense.validation_metrics`)
   and checkpoints, and the checkpoint holds every rank's
   :meth:`Defense.state_dict`. A step never reads a tensor on the host; the engine checks
   :attr:`Defense.finite_parts` on the device and ends an epoch whose loss became NaN or
   infinite with ``Diverged`` (see :meth:`Defense.train_step`).
5. After the last epoch: :meth:`Defense.finish_training` once (fit what the predict step needs
   on the training set, e.g. neural rejection's SVM).
6. The end-of-training validation pass and the test-set evaluation classify through
   :meth:`Defense.predictor`, the per-epoch validation counts through
   :meth:`Defense.epoch_predictor` (default: the same): a class or an abstention per sample,
   and a score. Default: the arg-max of the model's logits.

The hooks after :meth:`Defense.setup` read the device, rank and world size from the context it
kept (:meth:`Defense.require_context`); they are not passed again.

The simple case, all of today's per-batch losses, implements :meth:`Defense.loss` only: the
batches are the engine's loader over the training set and the step is loss → backward → the
engine's optimiser step. The engine owns the model being trained, its optimiser, schedule,
data order and DDP. A defense that needs more overrides the rest: a data-free defense yields
its own batches, one that alternates updates of several networks runs its own
``train_step`` and owns the optimisers of its extra networks, and everything it must carry
from one epoch to the next (networks, optimisers, memory banks, counters) goes through
``state_dict``/``load_state_dict``, so a resumed run equals an uninterrupted one.

Models passed to ``loss``/``train_step`` may be DDP-wrapped: run the training forward passes
through ``model`` (so gradients synchronise) and generate attacks, or take gradients for
other networks, on ``unwrap_model(model)``. Under DDP every rank must run the same number of
steps per epoch; per-rank randomness comes from ``DefenseContext.generator`` (seeded per rank).

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
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

from distfair.attacks import Attack


@dataclass(frozen=True)
class DefenseContext:
    """What a defense may know about its run, handed to :meth:`Defense.setup` once."""

    num_classes: int
    #: shape of one input, without the batch dimension
    in_shape: tuple[int, ...]
    #: (low, high): the valid input range
    bounds: tuple[float, float]
    class_names: tuple[str, ...]
    device: torch.device
    #: ``make_generator(*labels)``: a fresh torch.Generator on ``device`` seeded from the run's
    #: seed, this rank and ``labels`` (the engine's seeding; see :meth:`generator`)
    make_generator: Callable[..., torch.Generator]
    rank: int = 0
    world: int = 1
    #: resolved references the configuration names (name -> local file, e.g. a teacher
    #: checkpoint); the caller of the engine resolves run ids and downloads
    references: Mapping[str, str] = field(default_factory=dict)

    def generator(self, *labels: object) -> torch.Generator:
        """A generator for (run seed, ``labels``, rank), e.g. ``ctx.generator("batches", epoch)``:
        the same labels give the same stream in every run and after a resume, and different
        streams on different ranks. Draw per-epoch randomness from a per-epoch generator so a
        resumed epoch draws what the uninterrupted one did."""
        return self.make_generator(*labels)


class Defense(abc.ABC):
    name: ClassVar[str]
    #: whether the defense needs a training attack (``attack:`` in the config)
    needs_attack: ClassVar[bool] = True
    #: threat models (``Attack.norm`` values) of the training attacks this defense honours;
    #: None: any, because ``loss`` calls the configured attack as is. A defense running its own
    #: inner maximisation declares the norms it implements (TRADES, SpecNorm: {"linf"}).
    attack_norms: ClassVar[frozenset[str] | None] = None
    #: options whose value names a file this defense reads (a checkpoint file, an MLflow seed
    #: run id, or an MLflow configuration run id: each seed then reads the same seed's run),
    #: resolved per seed by the caller of the engine into ``DefenseContext.references[option]``
    #: (a local path). The option itself reaches ``__init__`` as written (e.g. FERD's ``teacher``).
    reference_options: ClassVar[tuple[str, ...]] = ()
    #: the numbers of :meth:`train_step`'s result that must stay finite: the engine watches
    #: them on the device (no host read per step) and ends the epoch with
    #: ``distfair.engine.steps.Diverged`` (``loss is nan at epoch e, batch b``) if one was NaN
    #: or infinite. In order of cause: the first non-finite one of the earliest batch is named
    #: (data-free distillation: ``generator_loss`` before the student's ``loss``).
    finite_parts: ClassVar[tuple[str, ...]] = ("loss",)
    #: whether the defense trains on adversarial examples of its configured ``attack``
    #: (adversarial training; the meta-analysis's ``at`` and ``budget`` interventions). Such a
    #: defense still trains clean when ``attack.eps`` is 0 or its adversarial weight (below) is 0.
    adversarial_training: ClassVar[bool] = False
    #: the option holding the weight of the adversarial loss, where it has one (waveform_at's
    #: λ ``adv_weight``); None: the adversarial loss always has weight
    adversarial_weight_option: ClassVar[str | None] = None
    #: the option holding the std of the Gaussian input noise the defense trains on (noise
    #: augmentation's ``sigma``); None: it trains on no noise
    noise_sigma_option: ClassVar[str | None] = None
    #: the smallest options (constructor keywords beyond ``attack`` and ``num_classes``) that make
    #: the defense run in about a second on a tiny model: what the contract checks of
    #: ``distfair.testing`` build it with. Default: none (its own defaults are small enough).
    TEST_OPTIONS: ClassVar[dict[str, Any]] = {}

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
        self.context: DefenseContext | None = None

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

    def require_context(self) -> DefenseContext:
        """The context :meth:`setup` kept (device, rank, world size, generators); RuntimeError
        naming the defense when it was not set up."""
        if self.context is None:
            raise RuntimeError(f"defense {self.name!r} was not set up: call setup(ctx) before its other hooks")
        return self.context

    def start_epoch(self, model: nn.Module, train_set, *, epoch: int, batch_size: int,
                    generator: torch.Generator | None) -> dict[str, float]:
        """Called before each training epoch with the plain (unwrapped) model. Per-epoch state
        (e.g. weights from the training set's robust confusion matrix) is computed here, on the
        device of the context (:meth:`require_context`); under DDP every rank calls it, on its
        shard (``ctx.rank`` of ``ctx.world``), and must reach the same state. Returns numbers
        to log with the epoch. Default: nothing."""
        return {}

    def setup(self, ctx: DefenseContext) -> None:
        """Called once before training (and before :meth:`load_state_dict` on resume). Build
        extra networks, their optimisers and anything read from ``ctx.references`` here.
        Default: keep the context as ``self.context``."""
        self.context = ctx

    def batches(self, loader: Iterable, *, epoch: int) -> Iterable:
        """The batches of ``epoch``, each a tuple of tensors (moved to the device by the engine)
        in the form :meth:`train_step` takes: ``(x, y)`` for the default step. The engine
        counts them to average the logged numbers. Default: ``loader``, the engine's loader over this rank's shard of the training set
        (shuffled per epoch from the seed). A data-free defense yields its own, drawn from
        ``self.context.generator(..., epoch)``; under DDP every rank must yield as many."""
        return loader

    def train_step(self, model: nn.Module, batch, optimizer: torch.optim.Optimizer, *,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One training step on ``batch``; returns the detached numbers to average over the
        epoch and log as ``train_<name>`` (``loss`` among them). ``optimizer`` is the engine's,
        over the parameters of ``model``; ``generator`` draws this step's random starts
        (seeded per seed, epoch and rank). Default: :meth:`loss`, zero the gradients, backward,
        step.

        No host synchronisation: never read a tensor's value here (``float``, ``.item()``, an
        ``if`` on a tensor), which would stall the CPU until the GPU caught up, every step.
        Return the loss even when it is NaN or infinite: the engine checks the
        :attr:`finite_parts` on the device and fails the seed at the epoch's end with the
        epoch and batch where it happened (what is trained after that point is thrown away).
        A defense that reads values on the host anyway (FAAL's exact solver) may raise
        ``FloatingPointError("loss is nan")`` itself; the engine adds the epoch and batch."""
        x, y = batch
        loss, parts = self.loss(model, x, y, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), **parts}

    def state_dict(self) -> dict[str, Any]:
        """Everything this defense carries from one epoch to the next (extra networks, their
        optimisers, memory banks, counters), as ``torch.save`` can store it; saved with every
        epoch checkpoint. Default: nothing (state rebuilt each epoch, as SyFAR's and SpecNorm's)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after :meth:`setup`, before the next epoch."""

    def finish_training(self, model: nn.Module, train_set, *, batch_size: int) -> dict[str, float]:
        """Called once after the last training epoch (also when a resumed run had nothing left
        to train), with the plain trained model in eval mode, before the validation pass and
        the test-set evaluation: fit what the predict step needs on the training set (neural
        rejection's SVM). Every rank calls it and must reach the same state. Must not change
        the model. Returns numbers to log on the seed run (``finish_<name>``). Default: nothing."""
        return {}

    def validation_metrics(self, counts: torch.Tensor, soft_sums: torch.Tensor) -> dict[str, float]:
        """This defense's own per-epoch validation numbers, logged with the epoch beside
        ``val_clean_acc`` and ``val_robust_acc``; called on every rank after each epoch that has
        a training attack, with that attack's validation pass (the per-epoch predict step,
        :meth:`epoch_predictor`): ``counts`` the K×K confusion counts (rows true, columns
        predicted, abstentions in no cell, summed over ranks) and ``soft_sums`` (K×K float64)
        the summed softmax of the attacked samples of each true class. Keys are metric names,
        ``val_``-prefixed (Sy-FAR: ``val_sym``, ``val_soft_sym``, ``val_asym_gap``); values
        finite floats. Default: nothing."""
        return {}

    def epoch_predictor(self, epoch: int):
        """The predict step of the per-epoch validation counts after ``epoch`` (what the
        logged ``val_*`` epoch curves measure). Default: :meth:`predictor`. A defense whose
        final predictor is costly or exists only after :meth:`finish_training` returns a
        cheaper one here (randomized smoothing: the base classifier on one noisy copy, the
        speech paper's noisy validation, §4.3; neural rejection: the network's arg-max)."""
        return self.predictor()

    def predictor(self):
        """The predict step every evaluation of the trained model uses: a
        ``distfair.evaluation.Predictor``, ``predictor(model, x) -> (pred, score)`` with ``pred``
        (B,) long, a class or ``ABSTAIN`` (-1), and ``score`` (B,) float; set its
        ``can_abstain`` if it may abstain (randomized smoothing, neural rejection), so the
        evaluations report rejection rates. Called after training (and per epoch for the
        validation counts), on every rank alike. Default: arg-max, never abstains, score the
        largest softmax probability."""
        from distfair.evaluation.predict import ARGMAX

        return ARGMAX

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-batch objective: (scalar to back-propagate, detached named components).
        x: (B, ...) inputs in the data's range, y: (B,) labels. A defense with its own
        :meth:`train_step` that does not use it raises ``NotImplementedError``."""


def check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")
