"""Adversarial attacks: the contract in ``_base.py``, one attack per module, a registry.

Adding an attack = one module with an ``Attack`` subclass + one line in ``ATTACKS``; the
contract tests (tests/test_attack_contract.py) pick it up automatically. What the gradient
attacks maximise is an ``Objective`` (``_objectives.py``), given per call.
"""
import inspect

from distfair.attacks._base import Attack
from distfair.attacks._objectives import (CrossEntropy, CWMargin, Objective, ReferenceKL, SoftTargetKL, UniformTargetKL,
                                         cw_margin)
from distfair.attacks.autoattack import AutoAttack
from distfair.attacks.cw_linf import CWLinf
from distfair.attacks.ensemble import Ensemble
from distfair.attacks.eyeglass import EyeglassAttack
from distfair.attacks.face_mask import FaceMaskAttack
from distfair.attacks.fgsm import FGSM
from distfair.attacks.pgd import PGD
from distfair.attacks.pgd_l2 import PGDL2
from distfair.attacks.roa import ROA
from distfair.attacks.square import Square

__all__ = ["ATTACKS", "Attack", "AutoAttack", "CWLinf", "CWMargin", "CrossEntropy", "Ensemble", "EyeglassAttack",
           "FGSM", "FaceMaskAttack", "Objective", "PGD", "PGDL2", "ROA", "ReferenceKL", "SoftTargetKL", "Square",
           "UniformTargetKL", "build_attack", "cw_margin"]

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgd_l2": PGDL2,
    "cw_linf": CWLinf,
    "square": Square,               # black-box (score-based)
    "autoattack": AutoAttack,       # APGD-CE, APGD-T, Square through ART
    "ensemble": Ensemble,           # per-sample worst case over member attacks
    "eyeglass": EyeglassAttack,     # physical: inside an eyeglass-frame mask
    "face_mask": FaceMaskAttack,    # physical: low-frequency lower-face occlusion
    "roa": ROA,                     # physical: rectangular occlusion
}


def build_attack(name: str, *, bounds: tuple[float, float], **params) -> Attack:
    """The registered attack ``name`` built with the data's ``bounds`` and its own params."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; accepted: {sorted(accepted)}")
    return cls(bounds=bounds, **params)
