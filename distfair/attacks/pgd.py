"""PGD-ℓ∞ with a random start (Madry et al., ICLR 2018, §2.1 and §4)."""
import torch
from torch import Tensor, nn

from distfair.attacks._base import Attack, _check_int, _check_real
from distfair.attacks._objectives import Objective


class PGD(Attack):
    """Projected Gradient Descent on the cross-entropy, ℓ∞, random start.

    Paper: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant
    to Adversarial Attacks", ICLR 2018, §2.1 (x_{t+1} = Π_{x+S}(x_t + α·sign(∇ₓ L))) and §4
    (start from a uniformly random point of the ε-ball).
    Threat model: white-box, ℓ∞ ball of radius ``eps`` around x, clamped to ``bounds``.
    Each step: ascend CE of y (untargeted) or descend CE of the target (targeted), then
    project onto the ε-ball around the clean x, then clamp to ``bounds``. Returns the last
    iterate.
    The cross-entropy is the default objective: another can be given per call
    (``attack(model, x, y, objective=...)``, e.g. a KL to soft targets; see ``_objectives.py``).

    Args (keyword-only):
        eps: ℓ∞ budget in input units (no default; e.g. 8/255 for images in [0, 1]).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        alpha: step size in input units; default None, meaning eps / 4. Must be > 0.
        steps: number of gradient steps; default 10. Must be >= 1.
        random_start: start from x + U[−eps, eps] (clamped to ``bounds``); default True.
            The noise is drawn with the call's ``generator`` (on the generator's device,
            then moved to x's), so the same seed gives the same x_adv.
        eps_relative_to: "none" (default: ``eps`` and ``alpha`` in input units, the speech
            paper's absolute amplitudes) or "rms": both are multiples of each sample's RMS
            amplitude, a per-sample budget ε·rms(x_i) (``_base.py``, :func:`clip_rms`).

    Shapes: x (B, ...) floating point in ``bounds``; y and target (B,) class indices; the
    model returns logits (B, K). Returns x_adv with x's shape, dtype and device, values in
    ``bounds`` and ‖x_adv − x‖∞ ≤ eps (≤ eps·rms(x_i) per sample with ``eps_relative_to="rms"``).

    Example:
        >>> attack = PGD(eps=8 / 255, alpha=2 / 255, steps=10)
        >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    name = "pgd"
    accepts_objective = True
    norm = "linf"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 alpha: float | None = None, steps: int = 10, random_start: bool = True,
                 eps_relative_to: str = "none"):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode)
        self._relative_budget(eps_relative_to)
        if alpha is not None:
            alpha = _check_real("alpha", alpha)
            if not alpha > 0:
                raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.steps = _check_int("steps", steps, minimum=1)
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be a bool, got {random_start!r}")
        self.random_start = random_start

    @property
    def step_size(self) -> float:
        """The step actually used: ``alpha``, or eps / 4 when alpha is None."""
        return self.eps / 4 if self.alpha is None else self.alpha

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None, objective: Objective | None = None) -> Tensor:
        x_adv = x
        if self.random_start:
            device = generator.device if generator is not None else x.device
            noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
            x_adv = (x + (2 * noise.to(x.device) - 1) * self._budget(x)).clamp(*self.bounds)
        step = self.step_size * self._scale(x)
        for _ in range(self.steps):
            grad = self._ascent_direction(model, x_adv, y, target, objective)
            x_adv = self._project(x_adv + step * grad.sign(), x)
        return x_adv
