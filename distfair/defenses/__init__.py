"""Defenses: one file each behind the :class:`Defense` contract; adding one is one file plus
one line in ``DEFENSES`` (the contract tests in tests/test_defense_contract.py pick it up).
"""
from __future__ import annotations

from distfair.defenses._base import Defense, DefenseContext
from distfair.defenses.pgd_at import PGDAT
from distfair.defenses.standard import Standard
from distfair.defenses.specnorm import SpecNorm
from distfair.defenses.syfar import SyFAR
from distfair.defenses.faal import FAAL
from distfair.defenses.dfrd import DFRD
from distfair.defenses.ferd import FERD
from distfair.defenses.trades import TRADES
from distfair.defenses.noise_aug import NoiseAug
from distfair.defenses.waveform_at import WaveformAT
from distfair.defenses.randomized_smoothing import RandomizedSmoothing
from distfair.defenses.neural_rejection import NeuralRejection

DEFENSES: dict[str, type[Defense]] = {
    "standard": Standard,
    "pgd_at": PGDAT,
    "syfar": SyFAR,
    "specnorm": SpecNorm,
    "faal": FAAL,
    "trades": TRADES,
    "ferd": FERD,       # data-free: generator + frozen teacher (defense.teacher), FERD paper 002
    "dfrd": DFRD,       # data-free baseline of FERD Table 1: Fast-style generator + PGD + RSLAD
    "noise_aug": NoiseAug,        # Gaussian noise augmentation, speech paper 003 §4.2
    "waveform_at": WaveformAT,    # clean + adversarial in one batch, λ = 0.5, speech paper 003 §4.2
    "randomized_smoothing": RandomizedSmoothing,   # noisy training, smoothed prediction that abstains, 003 §4.3
    "neural_rejection": NeuralRejection,           # RBF SVM on penultimate features that rejects, 003 §4.3
}

#: constructor arguments the engine supplies (not user options)
DEFENSE_RUNTIME_ARGS = ("attack", "num_classes")


def build_defense(name: str, *, attack, num_classes: int, **params) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name](attack=attack, num_classes=num_classes, **params)


__all__ = ["DEFENSES", "DEFENSE_RUNTIME_ARGS", "Defense", "DefenseContext", "build_defense"]
