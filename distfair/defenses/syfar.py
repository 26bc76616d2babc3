"""Sy-FAR: symmetry-based fair adversarial robustness (Najjar, Ronen, Sharif; paper 000).

Loss (§4.3, Alg. 1), per batch:

    λ_clean·CE(f(x), y) + λ_adv·CE(f(x_adv), y) + λ_sym·L_sym(C_soft)

where x_adv is the training attack's output, C_soft the soft confusion matrix of the
adversarial batch (§4.2: row i = mean softmax of the adversarial logits over samples of
class i; rows of classes absent from the batch are zero and add no penalty, methods.md) and
L_sym Eq. 2 with ε = 1/K unless ``sym_eps`` is given. CE terms are batch means.

Defaults are the paper's notation with unit weights; the official code fine-tunes with
λ_clean 0.1, λ_adv 1.0, λ_sym 10 (methods.md "Sy-FAR"): set them in the config.

Options beyond the paper (defaults reproduce Alg. 1 exactly):

``sym_estimate``
    ``"batch"`` (Alg. 1 line 6): C_soft of the current batch only. With B = 64 and K = 10 a
    row averages about 6 samples, and L_sym of a noisy estimate is biased upward (E|â−b̂| ≥
    |a−b|), so the per-batch value and its gradient are dominated by sampling noise on small
    data (README "Sy-FAR on digits"). ``"ema"``: the *value* of C is an exponentially
    weighted per-class mean over the batches of the epoch so far (sums and counts both
    decayed by ``sym_momentum``, reset at every epoch start, so a resumed run is exact), the
    *gradient* flows through the current batch's soft confusion only, at the same scale as
    ``"batch"``: C = C_acc.detach() + (C_batch − C_batch.detach()), i.e. ∇ = ∂L/∂C(C_acc) ·
    ∂C_batch/∂θ (a stochastic compositional gradient: the outer derivative from a low-noise
    estimate, the inner from the batch). Under DDP every rank accumulates its own shard.
    Measured on digits it made fine-tuning *worse* than ``"batch"`` (the coherent push
    overshoots while the value lags the model; README "Sy-FAR on digits"): a diagnostic
    option, not a recommendation.
``grad_norms``
    also return the ℓ2 norms of the parameter gradients of λ_clean·CE, λ_adv·CE and
    λ_sym·L_sym (``grad_norm_clean``, ``grad_norm_adv``, ``grad_norm_sym``), for diagnostics:
    three extra backward passes per batch (about 1.4× the step time on digits, README "Sy-FAR
    on digits"). ``torch.autograd.grad`` only: parameters' ``.grad`` are untouched; under DDP
    the norms are each rank's local gradients, before averaging.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distfair.defenses._base import Defense, check_weight
from distfair.metrics import soft_confusion_matrix, symmetry_loss
from distfair.models import unwrap_model

SYM_ESTIMATES = ("batch", "ema")


def validation_symmetry(counts: torch.Tensor, soft_sums: torch.Tensor) -> dict[str, float]:
    """Per-epoch symmetry of the attacked validation set (Sy-FAR §4.2, Eq. 1-2, ε = 1/K):
    ``val_sym`` on the row-normalised hard confusion matrix (the test metric ``sym_loss``),
    ``val_soft_sym`` on the soft confusion matrix of the whole validation set (what Sy-FAR's
    regulariser estimates from each training batch), ``val_asym_gap`` max |C_ij - C_ji| of
    the hard matrix. Classes absent from the validation set are left out. (The end-of-training
    validation pass's ``val_sym_loss`` / ``val_max_asym_gap`` use the primary evaluation attack.)"""
    n = counts.sum(dim=1, keepdim=True).to(torch.float64)
    hard = counts.to(torch.float64) / n.clamp_min(1)
    soft = soft_sums.to(torch.float64) / n.clamp_min(1)
    present = n.squeeze(1) > 0
    gap = (hard - hard.T).abs()[present][:, present]
    return {"val_sym": float(symmetry_loss(hard)), "val_soft_sym": float(symmetry_loss(soft)),
            "val_asym_gap": float(gap.max()) if gap.numel() else 0.0}


class SyFAR(Defense):
    name = "syfar"
    adversarial_training = True

    def __init__(self, *, attack, num_classes: int, lambda_clean: float = 1.0, lambda_adv: float = 1.0,
                 lambda_sym: float = 1.0, sym_eps: float | None = None, sym_estimate: str = "batch",
                 sym_momentum: float = 0.9, grad_norms: bool = False):
        super().__init__(attack=attack, num_classes=num_classes)
        for key, value in (("lambda_clean", lambda_clean), ("lambda_adv", lambda_adv), ("lambda_sym", lambda_sym)):
            check_weight(key, value)
        if sym_eps is not None and sym_eps <= 0:
            raise ValueError(f"sym_eps must be > 0 (or null for 1/K), got {sym_eps}")
        if sym_estimate not in SYM_ESTIMATES:
            raise ValueError(f"sym_estimate must be one of {SYM_ESTIMATES}, got {sym_estimate!r}")
        if not 0.0 <= sym_momentum < 1.0:
            raise ValueError(f"sym_momentum must be in [0, 1), got {sym_momentum}")
        self.lambda_clean, self.lambda_adv, self.lambda_sym = lambda_clean, lambda_adv, lambda_sym
        self.sym_eps = sym_eps
        self.sym_estimate, self.sym_momentum, self.grad_norms = sym_estimate, sym_momentum, grad_norms
        self._sums = self._counts = None          # accumulated soft-confusion sums / counts ("ema")

    def start_epoch(self, model, train_set, *, epoch, batch_size, generator):
        self._sums = self._counts = None           # the accumulated estimate restarts every epoch
        return {}

    def validation_metrics(self, counts: torch.Tensor, soft_sums: torch.Tensor) -> dict[str, float]:
        """``val_sym``, ``val_soft_sym``, ``val_asym_gap`` of the attacked validation pass
        (:func:`validation_symmetry`)."""
        return validation_symmetry(counts, soft_sums)

    def soft_confusion(self, probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C used by the loss, C of this batch alone). ``"batch"``: both the batch's C_soft
        (§4.2). ``"ema"``: the accumulated value with the batch's gradient (module docstring)."""
        batch = soft_confusion_matrix(probs, y, self.num_classes)
        if self.sym_estimate == "batch":
            return batch, batch
        k = self.num_classes
        sums = probs.detach().new_zeros(k, k).index_add(0, y, probs.detach())
        counts = torch.bincount(y, minlength=k).to(probs.dtype)
        if self._sums is None:
            self._sums, self._counts = sums, counts
        else:
            m = self.sym_momentum
            self._sums, self._counts = m * self._sums + sums, m * self._counts + counts
        acc = self._sums / self._counts.clamp_min(1e-12).unsqueeze(1)
        acc = torch.where(self._counts.unsqueeze(1) > 0, acc, torch.zeros_like(acc))
        return acc + (batch - batch.detach()), batch

    def loss(self, model, x, y, *, generator=None):
        clean_ce = F.cross_entropy(model(x), y)                                   # Alg. 1 line 2
        x_adv = self.attack(unwrap_model(model), x, y, generator=generator)       # line 3
        adv_logits = model(x_adv)                                                 # line 5
        C, C_batch = self.soft_confusion(adv_logits.softmax(dim=1), y)            # line 6
        sym = symmetry_loss(C, eps=self.sym_eps)                                   # line 7
        adv_ce = F.cross_entropy(adv_logits, y)                                   # line 8
        terms = {"clean": self.lambda_clean * clean_ce, "adv": self.lambda_adv * adv_ce,
                 "sym": self.lambda_sym * sym}
        total = terms["clean"] + terms["adv"] + terms["sym"]
        parts = {"clean_ce": clean_ce.detach(), "adv_ce": adv_ce.detach(), "sym": sym.detach()}
        if self.sym_estimate != "batch":
            parts["sym_batch"] = symmetry_loss(C_batch.detach(), eps=self.sym_eps)
        if self.grad_norms:
            params = [p for p in model.parameters() if p.requires_grad]
            for key, term in terms.items():
                grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                parts[f"grad_norm_{key}"] = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None)
                                                       + term.new_zeros(()))
        return total, parts
