"""Standard (non-adversarial) training: cross-entropy on clean inputs. A reference point."""
from __future__ import annotations

import torch.nn.functional as F

from distfair.defenses._base import Defense


class Standard(Defense):
    """Empirical risk minimisation, CE(f(x), y) averaged over the batch. No attack."""

    name = "standard"
    needs_attack = False

    def __init__(self, *, attack=None, num_classes: int):
        super().__init__(attack=attack, num_classes=num_classes)

    def loss(self, model, x, y, *, generator=None):
        ce = F.cross_entropy(model(x), y)
        return ce, {"clean_ce": ce.detach()}
