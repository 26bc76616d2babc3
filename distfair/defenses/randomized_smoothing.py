"""Randomized smoothing with abstention (Cohen, Rosenfeld & Kolter, ICML 2019, Alg. "PREDICT"),
as the speech paper studies it (paper 003, §4.3 "Biased Rejection in Defenses Study").

Training: the base classifier f learns on Gaussian-noised inputs, exactly noise augmentation
(:class:`~distfair.defenses.noise_aug.NoiseAug`, §4.2): ``CE(f(clamp(x + σ·n)), y)``, σ = 0.1
in the paper ("we train two M5 networks with σ = .1").

Prediction (the smoothed classifier g, :class:`SmoothedPredictor`): for each sample draw
``n_samples`` (N) noisy copies ``clamp(x + σ·n_j)``, count f's arg-max class over them, take
the two most frequent classes c_A, c_B with counts n_A ≥ n_B, and compute the two-sided
binomial test of n_A successes in n_A + n_B trials at p = 1/2 (SciPy's ``binomtest``; Cohen
et al.'s ``BinomPValue``). g predicts c_A when that p-value is ≤ α and abstains otherwise.
The score of each sample is its p-value (``reject_rule = "above"``): the counts are drawn
once per sample and every other α (the paper's grid [0.001, 1] step 0.001, Eq. 2) is applied
afterwards to the stored p-values by the ``auc_fpr`` summary. Noisy copies are clamped to the
data's bounds as in training (f∘clamp is itself a base classifier, so Cohen et al.'s argument
is unchanged). The paper's N grid {10, 100, 1000, 10000} is one configuration per N
(``tune_spaces/speech_rejection.yaml``).

Validation during training (:meth:`RandomizedSmoothing.epoch_predictor`): f's arg-max on one
noisy copy per sample, the paper's model choice "based on a held-out validation set augmented
with the same noise level" (§4.3), not the costly smoothed classifier.

Attacks (EOT): evaluation attacks differentiate :class:`GaussianEOT`, the log of the mean
softmax of f over ``eot_samples`` noisy copies (expectation over transformation, Athalye et
al. 2018), so a white-box attack targets the smoothed classifier rather than the bare f; the
attacked inputs are then classified by g as above. This is automatic for every
``eval.attacks`` entry of a randomized-smoothing run.

Randomness: every noise draw comes from generators of the run's seeding
(``DefenseContext.generator``): per epoch for the validation copies, one stream for the
end-of-training predictor (the validation pass, then the test set, in that order), never the
global RNG. Options: ``sigma`` (0.1), ``n_samples`` N (100), ``alpha`` α (0.001, Cohen et
al.'s), ``mc_batch`` (noisy copies per forward pass, 256), ``eot_samples`` (8).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from scipy.stats import binomtest
from torch import nn

from distfair.defenses.noise_aug import NoiseAug, gaussian_augment
from distfair.evaluation.predict import ABSTAIN, ArgmaxPredictor, Predictor
from distfair.seeding import generator


@lru_cache(maxsize=65536)
def binomial_p_value(n_a: int, n_b: int) -> float:
    """Two-sided p-value of n_a successes in n_a + n_b Bernoulli(1/2) trials (Cohen et al.'s
    ``BinomPValue``, SciPy's ``binomtest``); 1.0 when there are no trials."""
    if n_a + n_b == 0:
        return 1.0
    return float(binomtest(int(n_a), int(n_a + n_b), 0.5, alternative="two-sided").pvalue)


def top_two(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_A, n_A, n_B) per row of (B, K) counts: the most frequent class (the lowest index
    among equal counts), its count and the runner-up's count."""
    if counts.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got counts of shape {tuple(counts.shape)}")
    order = torch.argsort(-counts, dim=1, stable=True)
    top = counts.gather(1, order[:, :2])
    return order[:, 0], top[:, 0], top[:, 1]


def smoothed_decision(counts: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohen et al.'s PREDICT from per-sample class counts: (pred, p-value) with pred = c_A
    where p ≤ α, else :data:`ABSTAIN`; p-values float64."""
    c_a, n_a, n_b = top_two(counts.cpu())
    p = torch.tensor([binomial_p_value(int(a), int(b)) for a, b in zip(n_a.tolist(), n_b.tolist())],
                     dtype=torch.float64)
    pred = torch.where(p > alpha, torch.full_like(c_a, ABSTAIN), c_a)
    return pred.to(counts.device), p.to(counts.device)


class GaussianEOT(nn.Module):
    """``log mean_j softmax(f(clamp(x + σ·n_j)))`` over ``samples`` fresh draws per forward
    pass: the differentiable form of the smoothed classifier that evaluation attacks see
    (EOT). Its train/eval mode is the wrapped model's (it holds the model as a child)."""

    def __init__(self, model: nn.Module, sigma: float, samples: int, bounds: tuple[float, float] | None,
                 generator: torch.Generator):
        super().__init__()
        self.model, self.sigma, self.samples, self.bounds, self.generator = model, sigma, samples, bounds, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        copies = x.repeat_interleave(self.samples, dim=0)
        noise = torch.randn(copies.shape, generator=self.generator, device=self.generator.device, dtype=x.dtype)
        noisy = copies + self.sigma * noise.to(x.device)
        if self.bounds is not None:
            noisy = noisy.clamp(*self.bounds)
        probs = self.model(noisy).float().softmax(dim=1).view(b, self.samples, -1).mean(dim=1)
        return probs.clamp_min(1e-12).log()


class NoisyArgmax(Predictor):
    """f's arg-max on one noisy copy ``clamp(x + σ·n)`` per sample (never abstains): the
    noisy validation of §4.3."""
    can_abstain = False

    def __init__(self, sigma: float, bounds, generator: torch.Generator):
        self.sigma, self.bounds, self.generator = sigma, bounds, generator
        self.noise_sigma = sigma

    def __call__(self, model, x):
        return ArgmaxPredictor.from_logits(model(gaussian_augment(x, self.sigma, bounds=self.bounds,
                                                                  generator=self.generator)))


class SmoothedPredictor(Predictor):
    """The smoothed classifier g with abstention (module docstring): score = the binomial
    p-value, rejected when it is above ``alpha``."""
    can_abstain = True
    reject_rule = "above"

    def __init__(self, *, sigma: float, n_samples: int, alpha: float, bounds, generator: torch.Generator,
                 mc_batch: int = 256, eot_samples: int = 8):
        self.sigma, self.n_samples, self.threshold = sigma, n_samples, alpha
        self.noise_sigma = sigma                  # the evaluation reports each group's SNR at σ
        self.bounds, self.generator, self.mc_batch, self.eot_samples = bounds, generator, mc_batch, eot_samples

    @torch.no_grad()
    def counts(self, model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """(B, K) long: how often f predicts each class over ``n_samples`` noisy copies of each
        sample, drawn ``mc_batch`` copies per forward pass (sample by sample, in order)."""
        rows = []
        for sample in x:
            count = None
            left = self.n_samples
            while left > 0:
                m = min(left, self.mc_batch)
                copies = gaussian_augment(sample.unsqueeze(0).expand(m, *sample.shape), self.sigma,
                                          bounds=self.bounds, generator=self.generator)
                logits = model(copies)
                k = logits.shape[1] if num_classes is None else num_classes
                hist = torch.bincount(logits.argmax(dim=1), minlength=k)
                count = hist if count is None else count + hist
                left -= m
            rows.append(count)
        return torch.stack(rows) if rows else torch.zeros(0, num_classes or 2, dtype=torch.long, device=x.device)

    def __call__(self, model, x):
        if len(x) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return empty, empty.double()
        return smoothed_decision(self.counts(model, x), self.threshold)

    def attack_model(self, model):
        return GaussianEOT(model, self.sigma, self.eot_samples, self.bounds, self.generator)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class RandomizedSmoothing(NoiseAug):
    """Trains as noise augmentation with ``sigma``; predicts with the smoothed classifier and
    abstains (module docstring). Options: ``sigma``, ``n_samples``, ``alpha``, ``mc_batch``,
    ``eot_samples``."""
    name = "randomized_smoothing"
    needs_attack = False

    def __init__(self, *, attack=None, num_classes: int, sigma: float = 0.1, n_samples: int = 100,
                 alpha: float = 0.001, mc_batch: int = 256, eot_samples: int = 8):
        super().__init__(attack=attack, num_classes=num_classes, sigma=sigma)
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0 for randomized smoothing (the noise is the defense), got {sigma!r}")
        self.n_samples = _positive_int("n_samples", n_samples)
        self.mc_batch = _positive_int("mc_batch", mc_batch)
        self.eot_samples = _positive_int("eot_samples", eot_samples)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def _generator(self, *labels) -> torch.Generator:
        if self.context is None:            # used on its own, without the engine's setup: seed 0
            return generator(0, "randomized_smoothing", *labels)
        return self.context.generator("randomized_smoothing", *labels)

    def epoch_predictor(self, epoch: int):
        return NoisyArgmax(self.sigma, self.bounds, self._generator("validation", epoch))

    def predictor(self):
        return SmoothedPredictor(sigma=self.sigma, n_samples=self.n_samples, alpha=self.alpha, bounds=self.bounds,
                                 generator=self._generator("predict"), mc_batch=self.mc_batch,
                                 eot_samples=self.eot_samples)
