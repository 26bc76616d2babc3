"""SpecNorm / CSR: Confusional Spectral Regularization (Jin, Wu, Liu, Huang & Mu, "Enhancing
Robust Fairness via Confusional Spectral Regularization", ICLR 2025; official code
github.com/Alexkael/CONFUSIONAL-SPECTRAL-REGULARIZATION). The published per-epoch algorithm,
not Sy-FAR's per-batch "specnorm" variant (methods.md "Sy-FAR" → "Baselines").

Threat model: white-box ℓ∞ (e.g. ε 8/255 on images in [0, 1]), as TRADES: ε, the step and
the number of steps come from the configured training attack (``attack_schedule``), which
must therefore be an ℓ∞ attack (``attack_norms = {"linf"}``; others are refused by the
constructor and the config validator, see :mod:`distfair.defenses.trades`). Inputs x (B, ...)
in the data's range, labels y (B,), logits (B, K).

Per epoch (:meth:`SpecNorm.start_epoch`, one attack pass over the whole training set, model in
eval mode, sharded over DDP ranks and all-reduced; the benchmark amortises this cost):

1. C = hard robust confusion counts of the training set (rows true, columns predicted);
2. R = C row-normalised (R[i, j] = share of class i's samples predicted j; rows of classes
   absent from the set stay zero), then its diagonal zeroed: the paper's bound (after
   Machart & Ralaivola) and the official code count misclassifications only;
3. top singular triple (σ1, u1, v1) of R; A = σ1·u1 v1ᵀ;
4. W = A rescaled linearly to [0.01, 2.01] (min → 0.01, max → 2.01, as the official code),
   stored indexed ``W[predicted, true]`` (the official ``gm[pred][target]`` orientation).

Sign: σ1·u1 v1ᵀ does not change under the joint flip (u1, v1) → (−u1, −v1) that SVD leaves
free, and for a non-negative R with a simple σ1 it is non-negative (Perron–Frobenius). Only
when σ1 is tied is the top pair arbitrary and A may mix signs; A is then negated if its
entries sum below zero, so the dominant direction is non-negative. A constant A (no errors
at all, or a flat matrix) gives no class pair to prefer: W is all 1.0, the plain
unweighted term (also the weights used before the first ``start_epoch``).

Per batch (:meth:`SpecNorm.loss`), as the official ``trades_loss`` of
``CIFAR10_TRADES_fairness/trades_fair.py``: x_adv is TRADES' KL maximiser
(:func:`distfair.defenses.trades.trades_adversarial`, Zhang et al. ICML 2019 Alg. 1 lines 4-7:
Gaussian start, signed steps on KL(f(x) ‖ f(x')), ℓ∞ projection), used for both the KL term
and the CSR term; pred_i = argmax f(x_adv)_i::

    clean_ce = CE(f(x), y)
    kl       = (1/B) Σ_i Σ_k p_k(x_i) log(p_k(x_i) / p_k(x_adv_i))
    csr_ce   = (1/B) Σ_i W[pred_i, y_i]·CE(f(x_adv_i), y_i)
    loss     = clean_weight·clean_ce + beta·kl + csr_weight·csr_ce

i.e. the published 0.7·CE + 6·KL + 0.3·CSR with the defaults (the KL weight is not scaled by
clean_weight). KL is the official TRADES ``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))``
with batchmean. The official code writes csr_ce as a KL to the target W·onehot(y), which
differs from this weighted CE by a constant in θ (same gradients). Its trick of shrinking the
true logit by 10% before counting confusions is not reproduced.

Defaults: clean_weight 0.7, beta 6, csr_weight 0.3 (all >= 0); clean_weight 1, csr_weight 0
is plain TRADES. Components logged: clean_ce, kl, csr_ce. ``start_epoch`` logs spec_norm
(σ1), weight_min and weight_max.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distfair.defenses._base import Defense, check_weight
from distfair.defenses.trades import attack_schedule, trades_adversarial
from distfair.evaluation import confusion_counts
from distfair.models import unwrap_model

WEIGHT_LOW, WEIGHT_HIGH = 0.01, 2.01
#: relative spread below which the rank-one matrix counts as constant (round-off, not signal)
_FLAT_RTOL = 1e-9


def _top_component(confusion: Tensor, errors_only: bool) -> tuple[Tensor, float]:
    """(σ1·u1 v1ᵀ of the row-normalised matrix, σ1), float64, rows true, columns predicted."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square K×K matrix, got shape {tuple(confusion.shape)}")
    counts = confusion.detach().to("cpu", torch.float64)  # CPU float64: identical on every DDP rank
    if (counts < 0).any():
        raise ValueError("confusion must hold non-negative counts")
    totals = counts.sum(dim=1, keepdim=True)
    rates = torch.where(totals > 0, counts / totals.clamp_min(1e-300), torch.zeros_like(counts))
    if errors_only:
        rates.fill_diagonal_(0.0)
    U, S, Vh = torch.linalg.svd(rates)
    sigma = S[0]
    top = sigma * torch.outer(U[:, 0], Vh[0])
    if top.sum() < 0:  # only possible when σ1 is tied (see the module docstring)
        top = -top
    return top, float(sigma)


def _rescale(matrix: Tensor) -> Tensor:
    low, high = matrix.min(), matrix.max()
    spread = high - low
    if spread <= _FLAT_RTOL * max(abs(float(high)), abs(float(low))):  # also the all-zero case
        return torch.ones_like(matrix)
    return WEIGHT_LOW + (WEIGHT_HIGH - WEIGHT_LOW) * (matrix - low) / spread


def _stored_weights(top: Tensor) -> Tensor:
    """Rescaled, as float32, transposed to the [predicted, true] lookup orientation."""
    return _rescale(top).T.contiguous().float()


def csr_weights(confusion: Tensor, *, errors_only: bool = True) -> Tensor:
    """CSR per-sample weights from K×K confusion counts (rows true, columns predicted).

    Row-normalise (absent rows stay zero), zero the diagonal when ``errors_only`` (the
    published algorithm), take σ1·u1 v1ᵀ and rescale it linearly to [0.01, 2.01] (all 1.0 if
    constant). Returns a float32 (K, K) tensor on the CPU indexed ``[predicted, true]``, i.e.
    the transpose of the input's orientation.
    """
    top, _ = _top_component(confusion, errors_only)
    return _stored_weights(top)


class SpecNorm(Defense):
    name = "specnorm"
    attack_norms = frozenset({"linf"})  # the TRADES inner maximisation is ℓ∞ only
    adversarial_training = True

    def __init__(self, *, attack, num_classes: int, clean_weight: float = 0.7, beta: float = 6.0,
                 csr_weight: float = 0.3):
        super().__init__(attack=attack, num_classes=num_classes)
        for key, value in (("clean_weight", clean_weight), ("beta", beta), ("csr_weight", csr_weight)):
            check_weight(key, value)
        self.clean_weight, self.beta, self.csr_weight = clean_weight, beta, csr_weight
        #: (K, K) weights indexed [predicted, true]; None (all ones) until the first start_epoch
        self.weights: Tensor | None = None

    def start_epoch(self, model, train_set, *, epoch, batch_size, generator):
        ctx = self.require_context()
        counts = confusion_counts(model, train_set, self.num_classes, device=ctx.device, batch_size=batch_size,
                                  attack=self.attack, generator=generator, rank=ctx.rank, world=ctx.world)
        top, sigma = _top_component(counts, errors_only=True)
        self.weights = _stored_weights(top).to(ctx.device)
        return {"spec_norm": sigma, "weight_min": float(self.weights.min()),
                "weight_max": float(self.weights.max())}

    def sample_weights(self, pred: Tensor, y: Tensor) -> Tensor:
        """W[pred_i, y_i] per sample (ones before the first ``start_epoch``)."""
        if self.weights is None:
            return torch.ones(y.shape, device=y.device)
        return self.weights.to(y.device)[pred, y]

    def loss(self, model, x, y, *, generator=None):
        eps, step, steps = attack_schedule(self.attack)
        x_adv = trades_adversarial(unwrap_model(model), x, eps=eps, step_size=step, steps=steps,
                                   bounds=self.attack.bounds, generator=generator)
        clean_logits, adv_logits = model(x), model(x_adv)
        clean_ce = F.cross_entropy(clean_logits, y)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.log_softmax(clean_logits, dim=1),
                      reduction="batchmean", log_target=True)
        weights = self.sample_weights(adv_logits.detach().argmax(dim=1), y)
        csr_ce = (weights * F.cross_entropy(adv_logits, y, reduction="none")).mean()
        total = self.clean_weight * clean_ce + self.beta * kl + self.csr_weight * csr_ce
        parts = {"clean_ce": clean_ce, "kl": kl, "csr_ce": csr_ce}
        return total, {key: value.detach() for key, value in parts.items()}
