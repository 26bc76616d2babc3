"""Gaussian noise augmentation (speech paper 003, §4.2 "Biased Defense in Adversarial Robustness
Defenses Study"): train on x + σ·N(0, I) instead of x.

The paper adds zero-mean Gaussian noise with standard deviation σ ∈ {0, 0.01, 0.05, 0.1} to the
raw 16 kHz waveforms during training only ("We do not perform augmentations during validation
to ensure we choose the best clean performance model"); every evaluation here sees clean
inputs too, since only :meth:`loss` adds noise. Per batch:

    CE(f(clamp(x + σ·n, low, high)), y),   n ~ N(0, I) drawn from the step's ``generator``

σ = 0 is plain training (``standard``), bit for bit. The noisy input is clamped to the data's
bounds (waveforms: [-1, 1]), taken from :class:`DefenseContext` after ``setup`` (the engine
always calls it); a defense used on its own without ``setup`` does not clamp.

Randomness: the noise comes from the ``generator`` the engine hands every step (seeded per
seed, epoch and rank), drawn on the generator's device and moved to x's, never from the global
RNG: the same generator state gives the same noise, and σ > 0 without a generator is an error.
Threat model: none (no training attack: ``needs_attack = False``); the noise is not adversarial.

Options: ``sigma`` (≥ 0, in input units: waveform amplitude), the noise std; default 0.0, the
grid's first level (plain training): set it in the config (the quickstart and the sweep do).
The default is plain training (the grid's first level); ``RandomizedSmoothing`` trains the same
way with the paper's σ = 0.1 as its default.
Shapes: x (B, ...) in the data's bounds, y (B,) class indices, model logits (B, K).
Components: ``clean_ce`` (CE at the noisy input, the loss itself; "clean" = not adversarial).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distfair.defenses._base import Defense


def check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


def gaussian_augment(x: Tensor, sigma: float, *, bounds: tuple[float, float] | None,
                     generator: torch.Generator | None) -> Tensor:
    """clamp(x + sigma·N(0, I), *bounds): a new detached tensor with x's shape, dtype and
    device (x itself untouched). ``sigma == 0`` returns a detached copy of x and draws nothing.
    The noise is drawn with ``generator`` on its device, then moved to x's."""
    x = x.detach()
    if sigma == 0:
        return x.clone()
    if generator is None:
        raise ValueError("noise augmentation needs the step's generator (seeded per seed, epoch and rank); "
                         "it never draws from the global RNG")
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    noisy = x + sigma * noise.to(x.device)
    return noisy if bounds is None else noisy.clamp(*bounds)


class NoiseAug(Defense):
    name = "noise_aug"
    needs_attack = False
    noise_sigma_option = "sigma"

    def __init__(self, *, attack=None, num_classes: int, sigma: float = 0.0):
        super().__init__(attack=attack, num_classes=num_classes)
        self.sigma = check_sigma(sigma)

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The data's valid range from the context (None before ``setup``: no clamping)."""
        return None if self.context is None else tuple(self.context.bounds)

    def loss(self, model, x, y, *, generator=None):
        x_noisy = gaussian_augment(x, self.sigma, bounds=self.bounds, generator=generator)
        ce = F.cross_entropy(model(x_noisy), y)
        return ce, {"clean_ce": ce.detach()}
