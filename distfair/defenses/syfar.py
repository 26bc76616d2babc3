"""Sy-FAR: symmetry-based fair adversarial robustness (Najjar, Ronen, Sharif; paper 000).

Loss (§4.3, Alg. 1), per batch:

    λ_clean·CE(f(x), y) + λ_adv·CE(f(x_adv), y) + λ_sym·L_sym(C_soft)

where x_adv is the training attack's output, C_soft the soft confusion matrix of the
adversarial batch (§4.2: row i = mean softmax of the adversarial logits over samples of
class i; rows of classes absent from the batch are zero and add no penalty, methods.md) and
L_sym Eq. 2 with ε = 1/K unless ``sym_eps`` is given. CE terms are batch means.

Defaults are the paper's notation with unit weights; the official code fine-tunes with
λ_clean 0.1, λ_adv 1.0, λ_sym 10 (methods.md "Sy-FAR"): set them in the config.
"""
from __future__ import annotations

import torch.nn.functional as F

from distfair.defenses._base import Defense, check_weight
from distfair.metrics import soft_confusion_matrix, symmetry_loss
from distfair.models import unwrap_model


class SyFAR(Defense):
    name = "syfar"

    def __init__(self, *, attack, num_classes: int, lambda_clean: float = 1.0, lambda_adv: float = 1.0,
                 lambda_sym: float = 1.0, sym_eps: float | None = None):
        super().__init__(attack=attack, num_classes=num_classes)
        for key, value in (("lambda_clean", lambda_clean), ("lambda_adv", lambda_adv), ("lambda_sym", lambda_sym)):
            check_weight(key, value)
        if sym_eps is not None and sym_eps <= 0:
            raise ValueError(f"sym_eps must be > 0 (or null for 1/K), got {sym_eps}")
        self.lambda_clean, self.lambda_adv, self.lambda_sym = lambda_clean, lambda_adv, lambda_sym
        self.sym_eps = sym_eps

    def loss(self, model, x, y, *, generator=None):
        clean_ce = F.cross_entropy(model(x), y)                                   # Alg. 1 line 2
        x_adv = self.attack(unwrap_model(model), x, y, generator=generator)       # line 3
        adv_logits = model(x_adv)                                                 # line 5
        C = soft_confusion_matrix(adv_logits.softmax(dim=1), y, self.num_classes)  # line 6
        sym = symmetry_loss(C, eps=self.sym_eps)                                   # line 7
        adv_ce = F.cross_entropy(adv_logits, y)                                   # line 8
        total = self.lambda_clean * clean_ce + self.lambda_adv * adv_ce + self.lambda_sym * sym
        return total, {"clean_ce": clean_ce.detach(), "adv_ce": adv_ce.detach(), "sym": sym.detach()}
