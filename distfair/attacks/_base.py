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
"""
import abc
import math
import numbers
from typing import ClassVar

import torch
from torch import Tensor, nn

from distfair.attacks._objectives import CrossEntropy, Objective

TARGET_MODES = ("none", "random")


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

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Onto the ℓ∞ ball of radius eps around x, then onto ``bounds`` (in that order)."""
        x_adv = torch.maximum(torch.minimum(x_adv, x + self.eps), x - self.eps)
        return x_adv.clamp(*self.bounds)


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
