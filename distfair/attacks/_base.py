"""The attack contract: ``Attack.__call__`` does the bookkeeping once, ``_perturb`` the math.

Lifecycle of one call ``attack(model, x, y, target=None, generator=None, objective=None)``:

1. validate shapes: x (B, ...) floating point, y (B,) integer class indices; validate the
   ``objective`` (an ``Objective`` of ``_objectives.py``; None: the attack's own): refused by
   attacks whose ``accepts_objective`` is False, and a target (explicit or
   ``target_mode="random"``) is refused with an objective whose ``uses_target`` is False;
2. clone and detach x (the caller's tensor and its ``requires_grad`` are never touched);
3. record the ``training`` flag of every submodule and put the model in eval mode
   (methods.md "Conventions": attacks are generated in eval mode);
4. resolve the target: an explicit ``target`` makes the attack targeted; otherwise
   ``target_mode="random"`` draws a random wrong class per sample; otherwise untargeted;
5. call ``_perturb(model, x, y, target, generator)`` with gradients enabled, adding
   ``objective=objective`` only when one was given (so the default path is unchanged);
6. restore every submodule's previous mode (in a ``finally``) and return the result
   detached, with x's shape, dtype and device.

Input gradients come from ``torch.autograd.grad`` only, so parameters' ``.grad`` stay exactly
as they were. Gradient attacks ascend their objective through one helper,
``_ascent_direction``. Projection order: onto the ε-ball around the clean x, then onto ``bounds``.

**Budgets relative to each clip's loudness** (speech paper 003 §4.2 states ε and σ as absolute
waveform amplitudes, which stay the default): an attack that takes ``eps_relative_to`` (PGD,
FGSM, CW-ℓ∞) reads ``eps`` and its step size, with ``"rms"``, as multiples of each sample's
RMS amplitude sqrt(mean(x_i²)) (:func:`clip_rms`): sample i gets the ℓ∞ budget ε·rms(x_i), so a
quiet speaker is not attacked at a louder signal-to-perturbation ratio than a loud one. Its
``norm`` is then ``"linf_rms"``, so a defense that re-implements the inner maximisation with a
scalar ε (TRADES, SpecNorm) refuses it instead of silently changing the threat model.

Declared beside the math: the threat model (``norm``), ``black_box``, ``accepts_objective``, the
step schedule (``steps`` × ``step_size``, read by defenses that re-implement the inner
maximisation) and ``TEST_OPTIONS`` (what the contract checks of ``distfair.testing`` build it
with). An attack made of stages run one after the other on the still-robust samples
(ensembles, AutoAttack) subclasses :class:`StagedAttack`, which adds ``run_stages`` and
``black_box_stages`` to the contract.
"""
import abc
import math
import numbers
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._objectives import CrossEntropy, Objective

TARGET_MODES = ("none", "random")
#: how an attack with an ``eps_relative_to`` option reads ``eps``: in input units ("none", the
#: default) or as a multiple of each sample's RMS amplitude ("rms", a per-sample budget)
EPS_RELATIVE = ("none", "rms")


def clip_rms(x: Tensor) -> Tensor:
    """Each sample's RMS amplitude sqrt(mean(x_i²)) over all but the batch dimension, shaped
    (B, 1, ..., 1) to broadcast against x."""
    return x.detach().pow(2).flatten(1).mean(dim=1).sqrt().reshape(-1, *([1] * (x.ndim - 1)))


def random_wrong_class(y: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly drawn class different from ``y`` for each sample: (y + U{1..K-1}) mod K.

    Drawn on the generator's device (x's device when no generator) and moved to y's device.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for a random wrong class, got {num_classes}")
    device = generator.device if generator is not None else y.device
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=device)
    return (y + shift.to(y.device)) % num_classes


class Attack(abc.ABC):
    """Base class of every attack; subclasses implement ``_perturb`` only.

    Threat model: a perturbation of the input within a budget ``eps`` (norm set by the
    subclass), the result clamped to the data's valid range ``bounds``.

    Args (keyword-only):
        eps: perturbation budget, in input units (e.g. 8/255 for images in [0, 1]); >= 0.
        bounds: (low, high) valid input range, (0, 1) for images, (-1, 1) for waveforms.
        target_mode: "none" (untargeted unless a target is passed) or "random" (a random
            wrong class per sample, drawn with the call's generator).

    Subclasses add their own annotated keyword-only ``__init__`` parameters with defaults
    (a config validator reads ``inspect.signature``) and raise ``ValueError`` naming the
    parameter and value for invalid ones.
    """

    name: ClassVar[str]
    #: True for attacks that only query the model's outputs (no input gradients); the
    #: evaluation's self-check warns when one succeeds where every white-box attack failed.
    black_box: ClassVar[bool] = False
    #: the threat model's perturbation set: "linf" (‖x_adv − x‖∞ ≤ eps), "l2" (‖x_adv_i − x_i‖₂
    #: ≤ eps per sample), "patch" (only inside a region: a mask or a rectangle) or "mixed"
    #: (an ensemble of several). Declared by each attack class (or set per instance by attacks
    #: with a ``norm`` option); None means undeclared. Defenses that re-implement the inner
    #: maximisation read it (``Defense.attack_norms``) and refuse attacks they cannot honour.
    norm: str | None = None
    #: True for the gradient attacks that ascend any ``Objective`` (their ``_perturb`` takes an
    #: ``objective`` keyword and steps along ``_ascent_direction``); the others (black-box
    #: attacks through ART, ensembles, the physical attacks whose best-iterate rule is
    #: misclassification) refuse a custom objective with a ValueError.
    accepts_objective: ClassVar[bool] = False
    #: the search's schedule, ``steps`` iterations of ``step_size`` (input units): what a defense
    #: that re-implements the inner maximisation with this attack's budget takes from it
    #: (TRADES, SpecNorm). Default: one step of size ``eps`` (FGSM's); iterative attacks set
    #: their own ``steps`` and ``step_size``.
    steps: int = 1
    #: "none": ``eps`` in input units; "rms": a multiple of each sample's RMS (:data:`EPS_RELATIVE`;
    #: set by the attacks that take the option through :meth:`_relative_budget`)
    eps_relative_to: str = "none"
    #: the smallest extra constructor keywords (beyond ``eps`` and ``bounds``) that make the
    #: attack run in about a second on a tiny model: what the contract checks of
    #: ``distfair.testing`` build it with. Default: none (its own defaults are small enough).
    TEST_OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none"):
        self.eps = _check_real("eps", eps)
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")
        low, high = (_check_real("bounds", b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must have low < high, got {tuple(bounds)}")
        self.bounds = (low, high)
        if target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {target_mode!r}")
        self.target_mode = target_mode

    @property
    def step_size(self) -> float:
        """The size of one step of the search (see ``steps``). Default: ``eps``."""
        return self.eps

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Tensor | None = None,
                 generator: torch.Generator | None = None, objective: Objective | None = None) -> Tensor:
        """Adversarial examples for (x, y): shape, dtype and device of x, values in ``bounds``.

        ``objective``: what to maximise instead of the attack's default (``default_objective``),
        for attacks with ``accepts_objective``; see ``_objectives.py``.
        """
        _check_batch(x, y, target)
        self._check_objective(objective, target)
        x = x.detach().clone()
        if self.eps == 0:
            return x  # the ε-ball is {x}: nothing to search
        modes = [(module, module.training) for module in model.modules()]
        try:
            model.eval()
            with torch.enable_grad():
                if target is not None:
                    target = target.to(device=y.device, dtype=torch.long)
                elif self.target_mode == "random":
                    with torch.no_grad():
                        logits = model(x)
                    if logits.ndim != 2:
                        raise ValueError(f"model must return logits of shape (B, K), got {tuple(logits.shape)}")
                    target = random_wrong_class(y, logits.shape[1], generator)
                extra = {} if objective is None else {"objective": objective}
                x_adv = self._perturb(model, x, y, target, generator, **extra)
        finally:
            for module, training in modes:
                module.training = training
        return x_adv.detach().to(dtype=x.dtype, device=x.device)

    @abc.abstractmethod
    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        """The attack itself; x is already a detached clone and the model is in eval mode."""

    def _check_objective(self, objective: Objective | None, target: Tensor | None) -> None:
        if objective is None:
            return
        if not self.accepts_objective:
            raise ValueError(f"attack {self.name!r} does not accept a custom objective (it only maximises its "
                             f"own); attacks that do: those with accepts_objective = True")
        if not isinstance(objective, Objective):
            raise ValueError(f"objective must be a distfair.attacks.Objective, got {type(objective).__name__}")
        if not objective.uses_target and (target is not None or self.target_mode == "random"):
            raise ValueError(f"objective {objective!r} does not use a target: call the attack without target "
                             f"and with target_mode='none' (got target_mode={self.target_mode!r})")

    # Helpers shared by the gradient attacks.
    def default_objective(self) -> Objective:
        """What ``_ascent_direction`` increases when the call gives no objective: cross-entropy."""
        return CrossEntropy()

    def _ascent_direction(self, model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None,
                          objective: Objective | None = None) -> Tensor:
        """Gradient w.r.t. x_adv of the objective to increase (None: ``default_objective()``).

        Default: +CE(model(x_adv), y) untargeted, −CE(model(x_adv), target) targeted. The
        objective's per-sample values (B,) are summed over the batch, so the per-sample step
        does not depend on the batch size.
        """
        objective = self.default_objective() if objective is None else objective
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        value = objective(logits, x_adv=x_adv, y=y, target=target)
        if value.shape != y.shape:
            raise ValueError(f"objective {objective!r} must return one value per sample, shape {tuple(y.shape)}, "
                             f"got {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        return grad

    def _relative_budget(self, eps_relative_to: str) -> None:
        """Validate and keep the ``eps_relative_to`` option; "rms" declares ``norm`` "linf_rms"."""
        if eps_relative_to not in EPS_RELATIVE:
            raise ValueError(f"eps_relative_to must be one of {EPS_RELATIVE}, got {eps_relative_to!r}")
        self.eps_relative_to = eps_relative_to
        if eps_relative_to == "rms":
            self.norm = "linf_rms"

    def _scale(self, x: Tensor) -> Tensor | float:
        """What ``eps`` and the step size are multiplied by for the clean batch x: 1.0, or each
        sample's RMS (B, 1, ..., 1) with ``eps_relative_to="rms"``."""
        return clip_rms(x) if self.eps_relative_to == "rms" else 1.0

    def _budget(self, x: Tensor) -> Tensor | float:
        """The ℓ∞ radius around the clean batch x: ``eps``, or ``eps`` × each sample's RMS."""
        return self.eps if self.eps_relative_to != "rms" else self.eps * clip_rms(x)

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Onto the ℓ∞ ball of radius eps (per sample: :meth:`_budget`) around x, then onto
        ``bounds`` (in that order)."""
        eps = self._budget(x)
        x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
        return x_adv.clamp(*self.bounds)


def sequential(model: nn.Module, x: Tensor, y: Tensor, members: list[tuple[str, Attack]], *,
               target: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``members`` one after the other, each on the samples still robust; what a
    :class:`StagedAttack` runs.

    Robust means: untargeted (``target`` None) — predicted as y; targeted — not predicted as
    the target. At the start this is judged on the clean x, so misclassified clean points
    (untargeted) are non-robust from the start and never attacked. Each member is called
    through its own ``Attack.__call__`` on the robust subset, with ``target`` restricted to
    it (a member's own ``target_mode`` only matters when ``target`` is None). The model is
    used in its current mode: ``Attack.__call__`` of the caller has put it in eval mode.

    Args:
        model: returns logits (B, K).
        x, y, target: clean inputs (B, ...), labels (B,), optional targets (B,).
        members: (label, attack) pairs in running order; labels must be distinct.
        generator: passed to every member call, in order.

    Returns:
        (x_adv, stages). x_adv per sample: the output of the first member that broke it; for
        a sample never broken, the member output with the highest objective (CE of y, or
        −CE of the target; the earliest on ties); x itself for samples never attacked.
        ``stages`` maps each label, in order, to a bool tensor (B,) of the samples still
        robust after that member (cumulative: the last entry is the final per-sample flag).
    """
    labels = [label for label, _ in members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"members must have distinct labels, got {labels}")
    with torch.no_grad():
        robust = _still_robust(model(x), y, target)
    x_adv = x.detach().clone()
    best = torch.full(y.shape, float("-inf"), device=y.device)
    stages: dict[str, Tensor] = {}
    for label, attack in members:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() > 0:
            sub_target = None if target is None else target[idx]
            out = attack(model, x[idx], y[idx], target=sub_target, generator=generator)
            with torch.no_grad():
                logits = model(out)
                ok = _still_robust(logits, y[idx], sub_target)
                if sub_target is None:
                    objective = F.cross_entropy(logits, y[idx], reduction="none")
                else:
                    objective = -F.cross_entropy(logits, sub_target, reduction="none")
            objective = objective.to(device=best.device, dtype=best.dtype)
            better = ~ok | (objective > best[idx])  # broken, or a better failed try
            x_adv[idx[better]] = out[better].to(x_adv.dtype)
            best[idx[better & ok]] = objective[better & ok]
            robust = robust.clone()
            robust[idx[~ok]] = False
        stages[label] = robust.clone()
    return x_adv, stages


def _still_robust(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    pred = logits.argmax(dim=1).to(y.device)
    return pred == y if target is None else pred != target


class StagedAttack(Attack):
    """An attack made of stages run by :func:`sequential`, each on the samples every earlier
    one failed on (AutoAttack's per-sample ensemble, Croce & Hein, ICML 2020, §4).

    Adds to the contract: :meth:`run_stages` (the adversarial examples and, per stage, the
    samples still robust after it: the evaluation records them as ``stage_acc/<label>``) and
    :meth:`black_box_stages` (the stages that only query outputs: the self-checks compare
    them with the white-box ones). Subclasses implement :meth:`_stages` (called in eval mode,
    per call) and :meth:`black_box_stages`; the evaluation recognises a staged attack by
    ``isinstance(attack, StagedAttack)``.
    """

    def run_stages(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(x_adv, stages) as in :func:`sequential`, with ``Attack.__call__``'s bookkeeping.

        x_adv equals what ``attack(model, x, y, ...)`` returns; ``stages`` maps each stage
        label to the bool tensor (B,) of samples still robust after it (cumulative). With
        eps = 0 every stage returns x, so the flags are the clean ones.
        """
        runner = _StageRunner(self)
        x_adv = runner(model, x, y, target=target, generator=generator)
        return x_adv, runner.stages

    @abc.abstractmethod
    def black_box_stages(self) -> set[str]:
        """Labels of the stages (keys of ``run_stages``' dict) that only query outputs."""

    @abc.abstractmethod
    def _stages(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None) -> list[tuple[str, Attack]]:
        """The (label, attack) pairs to run, in order."""

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        return sequential(model, x, y, self._stages(model, x, y, target), target=target, generator=generator)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        return self._run(model, x, y, target, generator)[0]


class _StageRunner(Attack):
    """Runs a StagedAttack's ``_run`` under ``Attack.__call__`` and keeps its stages."""

    name = "_stage_runner"

    def __init__(self, owner: StagedAttack):
        # eps only gates Attack.__call__'s eps == 0 shortcut here: the budget lives in the
        # stages, which return x themselves when eps == 0, so the flags are still computed.
        super().__init__(eps=owner.eps or 1.0, bounds=owner.bounds, target_mode=owner.target_mode)
        self.owner = owner
        self.stages: dict[str, Tensor] = {}

    def _perturb(self, model, x, y, target, generator):
        x_adv, self.stages = self.owner._run(model, x, y, target, generator)
        return x_adv


def _check_real(param: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{param} must be a finite real number, got {value!r}")
    return float(value)


def _check_int(param: str, value, minimum: int) -> int:
    """Integer parameter check for subclasses (``steps must be >= 1, got 0``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{param} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {value}")
    return value


def _check_batch(x: Tensor, y: Tensor, target: Tensor | None) -> None:
    if not isinstance(x, Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (B, ...), got {_describe(x)}")
    if not isinstance(y, Tensor) or y.shape != x.shape[:1] or y.is_floating_point():
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},), got {_describe(y)}")
    if target is not None and (not isinstance(target, Tensor) or target.shape != y.shape
                               or target.is_floating_point()):
        raise ValueError(f"target must be an integer tensor of shape ({x.shape[0]},), got {_describe(target)}")


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__
