"""PGD adversarial training (Madry et al., ICLR 2018, §3-4): min_θ E[max_{‖δ‖∞≤ε} CE(f(x+δ), y)].

The inner maximisation is the configured training attack (PGD-ℓ∞ with random start in the
standard protocol: Sy-FAR §5 Table 1 uses ε 8/255, α 2/255, 10 steps on CIFAR). The outer
loss is the batch-mean cross-entropy on the adversarial examples only.
"""
from __future__ import annotations

import torch.nn.functional as F

from distfair.defenses._base import Defense
from distfair.models import unwrap_model


class PGDAT(Defense):
    name = "pgd_at"
    adversarial_training = True

    def __init__(self, *, attack, num_classes: int):
        super().__init__(attack=attack, num_classes=num_classes)

    def loss(self, model, x, y, *, generator=None):
        x_adv = self.attack(unwrap_model(model), x, y, generator=generator)
        adv_ce = F.cross_entropy(model(x_adv), y)
        return adv_ce, {"adv_ce": adv_ce.detach()}
