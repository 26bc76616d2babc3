"""Defenses: one file each behind the :class:`Defense` contract; adding one is one file plus
one line in ``DEFENSES`` (the contract tests in tests/test_defense_contract.py pick it up and
run ``distfair.testing.defenses`` on it, with its ``TEST_OPTIONS``).
Entries are imported on first use (``distfair.registry.Registry``): the configuration checks
the names without importing PyTorch.
"""
from __future__ import annotations

from distfair.registry import Registry, lazy_package

DEFENSES = Registry(__name__, {
    "standard": ".standard:Standard",
    "pgd_at": ".pgd_at:PGDAT",
    "syfar": ".syfar:SyFAR",
    "specnorm": ".specnorm:SpecNorm",
    "faal": ".faal:FAAL",
    "trades": ".trades:TRADES",
    "ferd": ".ferd:FERD",       # data-free: generator + frozen teacher (defense.teacher), FERD paper 002
    "dfrd": ".dfrd:DFRD",       # data-free baseline of FERD Table 1: Fast-style generator + PGD + RSLAD
    "noise_aug": ".noise_aug:NoiseAug",         # Gaussian noise augmentation, speech paper 003 §4.2
    "waveform_at": ".waveform_at:WaveformAT",   # clean + adversarial in one batch, λ = 0.5, speech paper 003 §4.2
    "randomized_smoothing": ".randomized_smoothing:RandomizedSmoothing",   # noisy training, smoothed prediction that abstains, 003 §4.3
    "neural_rejection": ".neural_rejection:NeuralRejection",               # RBF SVM on penultimate features that rejects, 003 §4.3
})

#: constructor arguments the engine supplies (not user options)
DEFENSE_RUNTIME_ARGS = ("attack", "num_classes")


def build_defense(name: str, *, attack, num_classes: int, **params):
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name](attack=attack, num_classes=num_classes, **params)


__all__ = ["DEFENSES", "DEFENSE_RUNTIME_ARGS", "Defense", "DefenseContext", "build_defense"]

lazy_package(__name__, {"Defense": "._base:Defense", "DefenseContext": "._base:DefenseContext",
                        **{target.split(":")[1]: target for target in DEFENSES._targets.values()}})
