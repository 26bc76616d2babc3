"""FGSM: one signed-gradient step of size ε (Goodfellow et al., ICLR 2015, §4)."""
import torch
from torch import Tensor, nn

from distfair.attacks._base import Attack
from distfair.attacks._objectives import Objective


class FGSM(Attack):
    """Fast Gradient Sign Method, ℓ∞.

    Paper: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples",
    ICLR 2015, §4 (Eq. x + ε·sign(∇ₓ J)).
    Threat model: white-box, ℓ∞ ball of radius ``eps`` around x, clamped to ``bounds``.
    Untargeted: one ascent step on the cross-entropy of y. Targeted (``target`` given or
    ``target_mode="random"``): one descent step on the cross-entropy of the target.
    The cross-entropy is the default objective: another can be given per call
    (``attack(model, x, y, objective=...)``, e.g. a KL to soft targets; see ``_objectives.py``).

    Args (keyword-only):
        eps: ℓ∞ budget in input units (no default; e.g. 8/255 for images in [0, 1]).
            eps = 0 returns x unchanged.
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        eps_relative_to: "none" (default, input units) or "rms": ``eps`` is a multiple of
            each sample's RMS amplitude (a per-sample budget; ``_base.py``).

    Shapes: x (B, ...) floating point in ``bounds``; y and target (B,) class indices; the
    model returns logits (B, K). Returns x_adv with x's shape, dtype and device, values in
    ``bounds`` and ‖x_adv − x‖∞ ≤ eps.

    Example:
        >>> attack = FGSM(eps=8 / 255)
        >>> x_adv = attack(model, x, y)
    """

    name = "fgsm"
    accepts_objective = True
    norm = "linf"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 eps_relative_to: str = "none"):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode)
        self._relative_budget(eps_relative_to)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None, objective: Objective | None = None) -> Tensor:
        grad = self._ascent_direction(model, x, y, target, objective)
        return self._project(x + self._budget(x) * grad.sign(), x)
