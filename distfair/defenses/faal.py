"""FAAL: Fairness-Aware Adversarial Learning (Zhang, Zhang, Mu, Huang & Ruan, "Towards
Fairness-Aware Adversarial Learning", CVPR 2024): class-level worst-case reweighting.

Per batch (methods.md "Sy-FAR" → "Baselines"):

1. x_adv from the configured training attack (PGD-ℓ∞ in the paper's protocol), generated on
   the unwrapped model; ℓ_i = CE(f(x_adv)_i, y_i) per sample.
2. m_c = mean of ℓ_i over the samples of class c, for the classes present in the batch only
   (absent classes get no weight and no term).
3. p = argmax_p Σ_c p_c m_c  s.t.  Σ p_c = 1, p ≥ 0, KL(u ‖ p) ≤ r, u uniform over the
   present classes: a KL-constrained distributionally robust weighting that leans towards
   the worst classes (r → 0 gives u, larger r more weight on the worst class). p is computed
   from detached losses and is a constant in the backward pass, as in the reference.
4. loss = Σ_c p_c m_c  (+ λ_clean · CE(f(x), y)).

The reference solves step 3 with cvxpy on the CPU for every batch; here
:func:`distfair.defenses._dro.kl_dro_weights` solves the same problem exactly (closed form
p_c ∝ 1/(η − m_c) with η found by bisection so that KL(u ‖ p) = r).
Protocol (methods.md): fine-tune an adversarially trained model, 2 epochs, lr 0.01, r 0.5.
Threat model: the training attack's (white-box, ε in input units, clamped to the data's range).

Options: ``r`` (KL radius in nats, > 0, default 0.5); ``lambda_clean`` (≥ 0, default 0.0):
weight of an optional clean cross-entropy term.
Shapes: x (B, ...) in the attack's ``bounds``, y (B,) class indices, model logits (B, K).
Components: ``adv_ce`` (plain batch mean of ℓ_i), ``weighted`` (Σ p_c m_c), ``max_weight``
(max_c p_c), and ``clean_ce`` when ``lambda_clean`` > 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distfair.defenses._base import Defense, check_weight
from distfair.defenses._dro import kl_dro_weights
from distfair.models import unwrap_model


def per_class_means(losses: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes present in y, sorted; mean of ``losses`` over each), differentiable in losses."""
    classes, index = torch.unique(y, sorted=True, return_inverse=True)
    sums = torch.zeros(len(classes), dtype=losses.dtype, device=losses.device).index_add(0, index, losses)
    counts = torch.bincount(index, minlength=len(classes)).to(losses.dtype)
    return classes, sums / counts


class FAAL(Defense):
    name = "faal"
    adversarial_training = True

    def __init__(self, *, attack, num_classes: int, r: float = 0.5, lambda_clean: float = 0.0):
        super().__init__(attack=attack, num_classes=num_classes)
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and r > 0):
            raise ValueError(f"r must be a finite number > 0, got {r!r}")
        check_weight("lambda_clean", lambda_clean)
        self.r, self.lambda_clean = float(r), lambda_clean

    def loss(self, model, x, y, *, generator=None):
        x_adv = self.attack(unwrap_model(model), x, y, generator=generator)
        losses = F.cross_entropy(model(x_adv), y, reduction="none")
        _, m = per_class_means(losses, y)
        try:
            # the exact solver runs on the host (like torch.unique above): FAAL reads values
            # every step by its nature, so it reports a non-finite loss itself
            p = kl_dro_weights(m.detach(), self.r)
        except ValueError:
            if torch.isfinite(m).all():
                raise
            kind = "nan" if torch.isnan(m).any() else "inf"
            raise FloatingPointError(f"loss is {kind}") from None
        weighted = (p * m).sum()
        parts = {"adv_ce": losses.mean().detach(), "weighted": weighted.detach(), "max_weight": p.max()}
        total = weighted
        if self.lambda_clean > 0:
            clean_ce = F.cross_entropy(model(x), y)
            total = total + self.lambda_clean * clean_ce
            parts["clean_ce"] = clean_ce.detach()
        return total, parts
