"""PGD-ℓ2 with a random start (Madry et al., ICLR 2018, §2.1 and §4, with the ℓ2 ball)."""
import torch
from torch import Tensor, nn

from distfair.attacks._objectives import Objective
from distfair.attacks.pgd import PGD


def _per_sample_norm(t: Tensor) -> Tensor:
    """‖t_i‖₂ of each sample, shaped (B, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


class PGDL2(PGD):
    """Projected Gradient Descent on the cross-entropy, ℓ2, random start.

    Paper: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant
    to Adversarial Attacks", ICLR 2018, §2.1 (x_{t+1} = Π_{x+S}(x_t + α·∇ₓL / ‖∇ₓL‖₂), the
    steepest-ascent step of the ℓ2 ball) and §4 (start from a random point of the ε-ball).
    Threat model: white-box, ℓ2 ball of radius ``eps`` around x (per sample, over all of a
    sample's features), clamped to ``bounds``. Each step: ascend CE of y (untargeted) or
    descend CE of the target (targeted) along the per-sample normalised gradient (a zero
    gradient gives no step), then rescale δ = x_adv − x to ‖δ‖₂ ≤ eps, then clamp to
    ``bounds`` (clamping to a box that contains x can only shrink ‖δ‖₂). Returns the last
    iterate.
    The cross-entropy is the default objective: another can be given per call
    (``attack(model, x, y, objective=...)``, e.g. a KL to soft targets; see ``_objectives.py``).

    Args (keyword-only):
        eps: ℓ2 budget in input units (no default; e.g. 0.5 for CIFAR images in [0, 1]).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        alpha: step size (ℓ2 length of one step) in input units; default None, meaning
            2.5 · eps / steps (the usual choice: the iterate can cross the ball 2.5 times).
            Must be > 0.
        steps: number of gradient steps; default 10. Must be >= 1.
        random_start: start from x + δ₀ (clamped to ``bounds``), δ₀ with a uniformly random
            direction (a normalised Gaussian) and a radius drawn uniformly from [0, eps];
            default True. Drawn with the call's ``generator`` (on the generator's device,
            then moved to x's), so the same seed gives the same x_adv.

    Shapes: x (B, ...) floating point in ``bounds``; y and target (B,) class indices; the
    model returns logits (B, K). Returns x_adv with x's shape, dtype and device, values in
    ``bounds`` and ‖x_adv_i − x_i‖₂ ≤ eps for every sample i (hence ‖x_adv − x‖∞ ≤ eps).

    Example:
        >>> attack = PGDL2(eps=0.5, steps=20)
        >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    name = "pgd_l2"
    accepts_objective = True
    norm = "l2"

    @property
    def step_size(self) -> float:
        """The step actually used: ``alpha``, or 2.5 · eps / steps when alpha is None."""
        return 2.5 * self.eps / self.steps if self.alpha is None else self.alpha

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None, objective: Objective | None = None) -> Tensor:
        x_adv = x
        if self.random_start:
            device = generator.device if generator is not None else x.device
            direction = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            radius = torch.rand((x.shape[0],), generator=generator, device=device, dtype=x.dtype)
            direction, radius = direction.to(x.device), radius.to(x.device).view_as(_per_sample_norm(x))
            x_adv = (x + direction / _safe(_per_sample_norm(direction)) * radius * self.eps).clamp(*self.bounds)
        for _ in range(self.steps):
            grad = self._ascent_direction(model, x_adv, y, target, objective)
            x_adv = self._project(x_adv + self.step_size * grad / _safe(_per_sample_norm(grad)), x)
        return x_adv

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Onto the ℓ2 ball of radius eps around x (per sample), then onto ``bounds``."""
        delta = x_adv - x
        norm = _per_sample_norm(delta)
        scale = torch.where(norm > self.eps, self.eps / _safe(norm), torch.ones_like(norm))
        return (x + delta * scale).clamp(*self.bounds)


def _safe(norm: Tensor) -> Tensor:
    """The norm as a divisor: zero norms become 1 (their vector is zero, so no step at all)."""
    return torch.where(norm > 0, norm, torch.ones_like(norm))
