"""CW-ℓ∞: PGD-ℓ∞ on the Carlini–Wagner margin loss (Carlini & Wagner, IEEE S&P 2017, §V)."""
from distfair.attacks._base import _check_real
from distfair.attacks._objectives import CWMargin, Objective, cw_margin
from distfair.attacks.pgd import PGD

__all__ = ["CWLinf", "cw_margin"]


class CWLinf(PGD):
    """PGD-ℓ∞ on the Carlini–Wagner margin ("CW∞" of robust-accuracy evaluations), random start.

    Paper: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P
    2017, §V (the loss f(x') = max(max_{j≠t} Z(x')_j − Z(x')_t, −κ) on the logits Z, §V.A),
    optimised here by PGD-ℓ∞ (Madry et al., ICLR 2018, §2.1, §4) as in robust(-fairness)
    evaluations rather than by C&W's own change of variables.
    Threat model: white-box, ℓ∞ ball of radius ``eps`` around x, clamped to ``bounds``.
    Each step ascends, summed over the batch,
        untargeted: min(max_{j≠y} z_j − z_y, κ)   (CW's f for the true class, negated),
        targeted:   min(z_t − max_{j≠t} z_j, κ)   (CW's f for the target, negated),
    by a signed step, then projects onto the ε-ball around the clean x, then clamps to
    ``bounds``. A sample stops moving once it is misclassified (reaches the target) with
    margin κ: its objective is flat there. Returns the last iterate. Another objective can be
    given per call (``attack(model, x, y, objective=...)``, see ``_objectives.py``); the CW
    margin above is the default.

    Args (keyword-only):
        eps: ℓ∞ budget in input units (no default; e.g. 8/255 for images in [0, 1]).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        alpha: step size in input units; default None, meaning eps / 4. Must be > 0.
        steps: number of gradient steps; default 10. Must be >= 1.
        random_start: start from x + U[−eps, eps] (clamped to ``bounds``); default True,
            drawn with the call's ``generator``, so the same seed gives the same x_adv.
        kappa: confidence κ, in logit units; default 0.0 (stop at the decision boundary).
            Must be >= 0 and finite; a large κ (e.g. 50) keeps pushing past the boundary.
        eps_relative_to: "none" (default) or "rms", as PGD's (a per-sample budget ε·rms(x_i)).

    Shapes: x (B, ...) floating point in ``bounds``; y and target (B,) class indices; the
    model returns logits (B, K), K >= 2. Returns x_adv with x's shape, dtype and device,
    values in ``bounds`` and ‖x_adv − x‖∞ ≤ eps.

    Example:
        >>> attack = CWLinf(eps=8 / 255, alpha=2 / 255, steps=30)
        >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    name = "cw_linf"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 alpha: float | None = None, steps: int = 10, random_start: bool = True, kappa: float = 0.0,
                 eps_relative_to: str = "none"):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode, alpha=alpha, steps=steps,
                         random_start=random_start, eps_relative_to=eps_relative_to)
        self.kappa = _check_real("kappa", kappa)
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {kappa}")

    def default_objective(self) -> Objective:
        """The κ-capped CW objective (summed over the batch by ``_ascent_direction``)."""
        return CWMargin(kappa=self.kappa)
