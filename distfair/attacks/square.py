"""Square Attack: score-based black-box random search (Andriushchenko et al., ECCV 2020), via ART."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._art import ART_NORMS, NORMS, is_randomized, run_art
from distfair.attacks._base import Attack, _check_int, _check_real


class Square(Attack):
    """Square Attack, ℓ∞ or ℓ2, through ART's ``SquareAttack``; black-box (outputs only).

    Paper: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
    black-box adversarial attack via random search", ECCV 2020, §3 (random search over
    square-shaped updates at the boundary of the ε-ball; ℓ∞ Alg. 2, ℓ2 Alg. 3), §3.1/§3.2
    (the schedule of the square size from ``p_init``).
    Threat model: black-box, score-based (logits only, no gradients); ℓ∞ or ℓ2 ball of radius
    ``eps`` around x, clamped to ``bounds``. Untargeted: minimise the margin z_y − max_{j≠y} z_j;
    targeted: minimise the cross-entropy of the target (the paper's losses, §3; passed to ART
    through its ``loss``/``adv_criterion`` hooks: ART's default margin takes the 2nd-largest
    logit, which is z_y itself once y drops to second place). Each candidate is kept only
    if it lowers the loss, so a point is never made worse; ART stops early once every
    sample is broken. Clean points that are already misclassified (reach the target) are
    returned unchanged.
    Layout: ART's Square needs (C, H, W) images whose side exceeds the largest square
    (round(sqrt(p_init·H·W)) for ℓ∞; H, W >= 10 for ℓ2). Other inputs ((B, D) features,
    (B, C, T) waveforms) are flattened per sample into a square S×S image, and too-small
    images are enlarged; the padding is cut off before the model sees it (for ℓ2 it only
    wastes part of the budget: the kept part still has norm <= eps).
    ℓ2 caveat (ART 1.20.1): its ℓ2 update divides the new square by
    sqrt(max(eps² − ‖δ‖², 0)/C + ‖δ_window‖²) where the paper's Alg. 3 multiplies by it, and
    every candidate is then rescaled to ‖δ‖₂ = eps; the search stays in the ball but its
    proposals differ from the paper's (and a zero scale gives a NaN candidate, rejected).

    Args (keyword-only):
        eps: budget in input units (no default); always passed to ART explicitly.
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        norm: "linf" (default) or "l2".
        n_queries: ART's ``max_iter``: Square iterations, one new candidate per robust sample
            each (ART also re-evaluates the current point, ~3 forward passes per iteration);
            default 5000 (AutoAttack's budget). Must be >= 1.
        p_init: initial fraction of the input covered by the square, 0 < p_init < 1; default 0.8.
        restarts: ART's ``nb_restarts``; default 1. Must be >= 1.

    Randomness comes from the call's ``generator`` (see ``_art.run_art``): the same seed gives
    the same output. Returns x_adv with x's shape, dtype and device, values in ``bounds``.

    Example:
        >>> attack = Square(eps=8 / 255, n_queries=1000)
        >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    name = "square"
    #: a tenth of the default queries: the contract checks (distfair.testing) in about a second
    TEST_OPTIONS = {"n_queries": 500}
    black_box = True

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (0.0, 1.0), target_mode: str = "none",
                 norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1):
        super().__init__(eps=eps, bounds=bounds, target_mode=target_mode)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.n_queries = _check_int("n_queries", n_queries, minimum=1)
        self.p_init = _check_real("p_init", p_init)
        if not 0 < self.p_init < 1:
            raise ValueError(f"p_init must be in (0, 1), got {p_init}")
        self.restarts = _check_int("restarts", restarts, minimum=1)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        from art.attacks.evasion.square_attack import SquareAttack

        def make(classifier):
            batch = max(1, len(x))
            if target is None:
                hooks = {"loss": lambda xs, ys: _margin(classifier.predict(xs, batch_size=batch), ys)}
            else:
                hooks = {"adv_criterion": lambda pred, t: pred.argmax(1) == t.argmax(1),
                         "loss": lambda xs, t: _target_ce(classifier.predict(xs, batch_size=batch), t)}
            return SquareAttack(classifier, norm=ART_NORMS[self.norm], max_iter=self.n_queries, eps=self.eps,
                                p_init=self.p_init, nb_restarts=self.restarts, batch_size=batch, verbose=False,
                                **hooks)

        layout = square_layout(x.shape, self.norm, self.p_init, self.bounds[0])
        return run_art(model, x, y if target is None else target, make, generator=generator, eps=self.eps,
                       norm=self.norm, bounds=self.bounds, layout=layout, cache_queries=not is_randomized(model, x))


def _margin(logits: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """z_y − max_{j≠y} z_j per sample (the paper's untargeted loss), from logits."""
    own = (logits * onehot).sum(axis=1)
    return own - np.where(onehot > 0, -np.inf, logits).max(axis=1)


def _target_ce(logits: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Cross-entropy of the one-hot target per sample, from logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - (z * onehot).sum(axis=1)


def _fits(h: int, w: int, norm: str, p_init: float) -> bool:
    """Whether ART's Square can run on (h, w) images: its largest square stays inside."""
    side = max(int(round(math.sqrt(p_init * h * w))), 1 if norm == "linf" else 3)
    if norm == "l2":
        side += 1 if side % 2 == 0 else 0  # ART makes the ℓ2 square's side odd
        if min(h, w) < 10 or w < 5 * (h // 5):  # ART's ℓ2 init tiles h // 5 squares over w
            return False
    return side < h and side < w


def square_layout(shape: torch.Size, norm: str, p_init: float, fill: float):
    """``(art_shape, to_art, to_x)`` for ``run_art``: an image layout ART's Square accepts."""
    if len(shape) == 4 and _fits(shape[2], shape[3], norm, p_init):
        return tuple(shape[1:]), (lambda t: t), (lambda t: t)
    if len(shape) == 4:
        channels, (h, w) = shape[1], shape[2:]
        pad_h, pad_w = 0, 0
        while not _fits(h + pad_h, w + pad_w, norm, p_init):
            pad_h, pad_w = pad_h + 1, pad_w + 1
        return ((channels, h + pad_h, w + pad_w),
                lambda t: F.pad(t, (0, pad_w, 0, pad_h), value=fill),
                lambda z: z[:, :, :h, :w])
    sample_shape, size = tuple(shape[1:]), math.prod(shape[1:])
    side = max(1, math.isqrt(size - 1) + 1) if size > 0 else 1
    while not _fits(side, side, norm, p_init):
        side += 1
    return ((1, side, side),
            lambda t: F.pad(t.reshape(len(t), -1), (0, side * side - size), value=fill).view(-1, 1, side, side),
            lambda z: z.reshape(len(z), -1)[:, :size].reshape(len(z), *sample_shape))
