"""What a gradient attack maximises: the ``Objective`` contract and its five implementations.

An objective is called once per attack step as ``objective(logits, x_adv=..., y=..., target=...)``
with the attacked model's logits (B, K) at the current iterate x_adv (B, ...), the labels y
(B,) and the attack's target (B,) or None, and returns the per-sample values to *increase*,
shape (B,). The attack ascends their sum (so a sample's step does not depend on the batch
size), by ``torch.autograd.grad`` w.r.t. x_adv only.

- :class:`CrossEntropy` — the default: CE(z, y) untargeted, −CE(z, target) targeted.
- :class:`CWMargin` — the Carlini–Wagner margin, capped at κ (CW-ℓ∞'s default).
- :class:`SoftTargetKL` — KL(p ‖ softmax(z)) to fixed soft targets p (TRADES, RSLAD, FERD's UTAE).
- :class:`ReferenceKL` — KL(R(x) ‖ R(x_adv)) through a second, frozen model R.
- :class:`UniformTargetKL` — FERD's UTAE objective KL(T(x) ‖ T(x_adv)) − γ·KL(U ‖ T(x_adv)).

Only the first two use the target; an attack refuses a target (explicit or
``target_mode="random"``) with an objective whose ``uses_target`` is False. An objective is a
runtime argument (``attack(model, x, y, objective=...)``), never a YAML option; attacks that
cannot honour one (``Attack.accepts_objective`` False) refuse it with a ValueError.

KL reductions (methods.md "Conventions"): every KL here is summed over the classes per sample
(``F.kl_div(..., reduction="none").sum(1)``), never divided by K.
"""
import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Objective(abc.ABC):
    """Per-sample values an attack increases: ``(logits (B, K), *, x_adv, y, target) -> (B,)``.

    ``logits`` carry the graph to ``x_adv``; an implementation may also run ``x_adv`` through
    another model, and must leave that model's mode and parameters' ``.grad`` as they were.
    """

    #: whether the value depends on the attack's target; False means a target is refused
    uses_target: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Values to maximise, (B,)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(Objective):
    """CE(z, y) untargeted, −CE(z, target) targeted (Madry et al., ICLR 2018, §2.1; Goodfellow
    et al., ICLR 2015, §4). The default objective of FGSM, PGD-ℓ∞ and PGD-ℓ2."""

    uses_target = True

    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")


def cw_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """z_label − max_{j≠label} z_j per sample, shape (B,); negative where another class leads."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return own - others.amax(dim=1)


class CWMargin(Objective):
    """The Carlini–Wagner margin capped at κ (Carlini & Wagner, IEEE S&P 2017, §V.A), negated
    to be maximised: min(max_{j≠y} z_j − z_y, κ) untargeted, min(z_t − max_{j≠t} z_j, κ)
    targeted. The default objective of CW-ℓ∞; ``kappa`` in logit units, >= 0."""

    uses_target = True

    def __init__(self, kappa: float = 0.0):
        self.kappa = float(kappa)
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {kappa}")

    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        value = -cw_margin(logits, y) if target is None else cw_margin(logits, target)
        return value.clamp(max=self.kappa)

    def __repr__(self) -> str:
        return f"CWMargin(kappa={self.kappa!r})"


def _check_distribution(name: str, p: Tensor, log: bool) -> None:
    if not isinstance(p, Tensor) or p.ndim != 2 or not p.is_floating_point():
        got = f"{p.dtype} tensor of shape {tuple(p.shape)}" if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"{name} must be a floating-point tensor of shape (B, K), got {got}")
    probs = p.exp() if log else p
    if not torch.isfinite(probs).all() or (probs < 0).any() or not torch.allclose(
            probs.sum(1), torch.ones((), dtype=p.dtype, device=p.device), atol=1e-4):
        kind = "log-probabilities" if log else "probabilities"
        raise ValueError(f"{name} must hold {kind}: rows of non-negative values summing to 1")


def _kl_to(target: Tensor, logits: Tensor, log_target: bool) -> Tensor:
    """KL(target ‖ softmax(logits)) per sample, summed over classes, (B,)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match the objective's "
                         f"soft targets of shape {tuple(target.shape)} (one row per sample of the batch)")
    return F.kl_div(F.log_softmax(logits, dim=1), target.to(logits.dtype), reduction="none",
                    log_target=log_target).sum(dim=1)


class SoftTargetKL(Objective):
    """KL(p ‖ softmax(z)) to fixed soft targets p, per sample, summed over the K classes.

    The inner maximisation of TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically
    Principled Trade-off between Robustness and Accuracy", ICML 2019, Alg. 1 l. 4-7: p = f(x),
    the clean prediction), of RSLAD (Zi, Zhao, Ma & Jiang, "Revisiting Adversarial Robustness
    Distillation: Robust Soft Labels Make Student Better", ICCV 2021: p = the teacher's T(x),
    the attacked model the student) and the first term of FERD's UTAE when the attacked model
    is the teacher (FERD, paper 002, Eq. 10).

    Args:
        targets: (B, K) probabilities (rows >= 0 summing to 1), or log-probabilities with
            ``log_target=True`` (``F.kl_div``'s ``log_target``, as TRADES computes it). Detached
            and held fixed: the batch attacked must be the one they were computed for.
        log_target: default False.
    """

    def __init__(self, targets: Tensor, *, log_target: bool = False):
        if not isinstance(log_target, bool):
            raise ValueError(f"log_target must be a bool, got {log_target!r}")
        _check_distribution("targets", targets, log_target)
        self.targets, self.log_target = targets.detach(), log_target

    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return _kl_to(self.targets.to(logits.device), logits, self.log_target)

    def __repr__(self) -> str:
        return f"SoftTargetKL(targets={tuple(self.targets.shape)}, log_target={self.log_target})"


class ReferenceKL(Objective):
    """KL(R(x) ‖ R(x_adv)) through a second, frozen model R, per sample, summed over classes.

    The discrepancy FERD's UTAE drives up on its teacher (paper 002, Eq. 10, first term), and
    TRADES' inner objective with R the attacked model itself (Zhang et al., ICML 2019, Alg. 1),
    computed through R whatever model the attack is given (whose logits are then unused). R runs in eval
    mode (methods.md "Conventions") and every submodule's mode is restored after each forward;
    gradients reach x_adv only, so R's parameters (``requires_grad`` and ``.grad``) are
    untouched.

    Args:
        reference: R, returns logits (B, K).
        x: the clean batch (B, ...) the attack will be called on; R(x) is computed here once.
    """

    def __init__(self, reference: nn.Module, x: Tensor):
        if not isinstance(reference, nn.Module):
            raise ValueError(f"reference must be a torch.nn.Module, got {type(reference).__name__}")
        self.reference = reference
        with torch.no_grad():
            self.log_p_clean = F.log_softmax(self._forward(x.detach()), dim=1)

    def _forward(self, x: Tensor) -> Tensor:
        modes = [(module, module.training) for module in self.reference.modules()]
        try:
            self.reference.eval()
            logits = self.reference(x)
        finally:
            for module, training in modes:
                module.training = training
        if logits.ndim != 2:
            raise ValueError(f"reference must return logits of shape (B, K), got {tuple(logits.shape)}")
        return logits

    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return _kl_to(self.log_p_clean.to(x_adv.device), self._forward(x_adv), log_target=True)

    def __repr__(self) -> str:
        return f"ReferenceKL(reference={type(self.reference).__name__}, x={tuple(self.log_p_clean.shape)})"


class UniformTargetKL(Objective):
    """FERD's Uniform-Target Adversarial Example objective, per sample (paper 002, §"Label-Space
    Attack Diversification for Fairness Optimization", Eq. 10):

        KL(T(x) ‖ T(x_U)) − γ · KL(U ‖ T(x_U))

    with T(x) the fixed reference logits of the clean batch, T(x_U) the attacked model's logits
    at the iterate and U the uniform distribution over the K classes. The first term pushes the
    prediction away from the clean one; the second (subtracted, so the attack *decreases* it)
    keeps the adversarial prediction close to uniform, spreading the attack targets over all
    classes instead of the few "easily confused" ones. γ = 0 is plain KL-PGD (identical to
    ``SoftTargetKL`` of the reference's log-probabilities); the paper uses γ = 0.5 and finds
    0.1-0.5 best (Fig. 6). Eq. 10 attacks the *teacher* f^T (both terms through f^T): give the
    attack the teacher, with ``reference_logits`` = teacher(x).

    Both KLs are summed over the K classes per sample (module docstring); KL(U ‖ q) =
    Σ_k (1/K)·log((1/K) / q_k).

    Args:
        reference_logits: (B, K) finite logits T(x) of the clean batch the attack will be called
            on; detached and held fixed.
        gamma: γ >= 0, weight of the uniformity term; default 0.5.
    """

    def __init__(self, reference_logits: Tensor, *, gamma: float = 0.5):
        if not isinstance(reference_logits, Tensor) or reference_logits.ndim != 2 \
                or not reference_logits.is_floating_point():
            got = (f"{reference_logits.dtype} tensor of shape {tuple(reference_logits.shape)}"
                   if isinstance(reference_logits, Tensor) else type(reference_logits).__name__)
            raise ValueError(f"reference_logits must be a floating-point tensor of shape (B, K), got {got}")
        if not torch.isfinite(reference_logits).all():
            raise ValueError("reference_logits must be finite")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        self.log_p_reference = F.log_softmax(reference_logits.detach(), dim=1)
        self.gamma = float(gamma)

    def __call__(self, logits: Tensor, *, x_adv: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        away = _kl_to(self.log_p_reference.to(logits.device), logits, log_target=True)
        log_uniform = torch.full_like(logits, -math.log(logits.shape[1]))
        return away - self.gamma * _kl_to(log_uniform, logits, log_target=True)

    def __repr__(self) -> str:
        return f"UniformTargetKL(reference_logits={tuple(self.log_p_reference.shape)}, gamma={self.gamma!r})"
