"""Waveform adversarial training with clean and adversarial examples in one batch (speech
paper 003, §4.2; methods.md "Speech equality study").

§4.2: "we incorporate adversarial examples crafted by a PGD attack with ε = {0.001, 0.005, 0.01,
0.1}, 10 steps, and an α = ε/5. We add adversarial examples in the same batch as our clean
examples and optimize for the joint loss with λ = .5, weighting both the adversarial and clean
performance equally." Per batch, with λ = ``adv_weight``:

    (1 − λ)·CE(f(x̃), y) + λ·CE(f(x̃_adv), y)

with x̃ the (optionally noise-augmented) batch and x̃_adv = attack(x̃). Both halves go through
ONE forward pass of the concatenated batch [x̃; x̃_adv] ("in the same batch"), so a BatchNorm
model (``m5``) normalises with statistics over clean and adversarial samples together; each CE
is the mean over its own B samples, so λ = 0.5 equals the mean CE over the 2B samples and
weighs clean and adversarial performance equally. A model without BatchNorm (``m5_tricks``)
gives the same numbers as two separate passes.

Noise augmentation combined (option ``sigma``, default 0): the paper's Tables 1-2 list every
model with both an "AT Budget" and a "Noise Aug." level (e.g. M5, 0.005, 0.05), i.e. models
trained with both at once. The paper does not say in which order; here the noise comes first,
as data augmentation of the batch (x̃ = clamp(x + σ·N(0, I)), see ``noise_aug.py``), and the
attack perturbs the noisy batch, so both loss terms see the augmented data. σ = 0 leaves x.

AT budget 0 ("no AT", the tables' "0" rows): the configured attack with ``eps: 0`` returns x
without any step (``Attack.__call__``), so the loss is CE(f(x̃)) and one grid covers the
paper's 5 budgets × 4 σ levels (``tune_spaces/speech_interventions.yaml``).

Threat model: whatever the configured training attack is, called as is on the plain
(unwrapped) model in eval mode (the attack restores the model's modes): the paper's PGD-ℓ∞
with random start, ε in waveform units ([-1, 1]), α = ε/5, 10 steps (set in ``attack:``).
Options: ``adv_weight`` λ ∈ [0, 1], default 0.5 (λ = 0: clean training on x̃, the attack
still runs and its CE is logged); ``sigma`` ≥ 0, default 0.0, the noise std in input units.
Randomness (attack start, noise) from the step's ``generator``: noise first, then the attack.
Shapes: x (B, ...) in the data's bounds, y (B,) class indices, model logits (B, K).
Components: ``clean_ce``, ``adv_ce`` (unweighted means over their halves).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distfair.defenses._base import Defense
from distfair.defenses.noise_aug import check_sigma, gaussian_augment
from distfair.models import unwrap_model


class WaveformAT(Defense):
    name = "waveform_at"
    adversarial_training = True
    adversarial_weight_option = "adv_weight"
    noise_sigma_option = "sigma"

    def __init__(self, *, attack, num_classes: int, adv_weight: float = 0.5, sigma: float = 0.0):
        super().__init__(attack=attack, num_classes=num_classes)
        if isinstance(adv_weight, bool) or not isinstance(adv_weight, (int, float)) \
                or not (math.isfinite(adv_weight) and 0 <= adv_weight <= 1):
            raise ValueError(f"adv_weight must be a number in [0, 1] (the paper's λ = 0.5), got {adv_weight!r}")
        self.adv_weight = float(adv_weight)
        self.sigma = check_sigma(sigma)

    def loss(self, model, x, y, *, generator=None):
        # the training attack is bound to the data's range by the engine: its bounds are the data's
        x_aug = gaussian_augment(x, self.sigma, bounds=tuple(self.attack.bounds), generator=generator)
        x_adv = self.attack(unwrap_model(model), x_aug, y, generator=generator)
        logits = model(torch.cat([x_aug, x_adv]))
        clean_ce = F.cross_entropy(logits[: len(y)], y)
        adv_ce = F.cross_entropy(logits[len(y):], y)
        total = (1 - self.adv_weight) * clean_ce + self.adv_weight * adv_ce
        return total, {"clean_ce": clean_ce.detach(), "adv_ce": adv_ce.detach()}
