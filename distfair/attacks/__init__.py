"""Adversarial attacks: the contract in ``_base.py``, one attack per module, a registry.

Adding an attack = one module with an ``Attack`` subclass + one line in ``ATTACKS``; the
contract tests (tests/test_attack_contract.py) pick it up automatically and run
``distfair.testing.attacks`` on it, with its ``TEST_OPTIONS``. What the gradient
attacks maximise is an ``Objective`` (``_objectives.py``), given per call.

Nothing is imported until it is used (``distfair.registry.Registry``): the configuration checks
the names of ``ATTACKS`` without importing PyTorch.
"""
import inspect

from distfair.registry import Registry, lazy_package

__all__ = ["ATTACKS", "Attack", "AutoAttack", "CWLinf", "CWMargin", "CrossEntropy", "Ensemble", "EyeglassAttack",
           "FGSM", "FaceMaskAttack", "Objective", "PGD", "PGDL2", "ROA", "ReferenceKL", "SoftTargetKL", "Square",
           "StagedAttack", "UniformTargetKL", "build_attack", "cw_margin"]

ATTACKS = Registry(__name__, {
    "fgsm": ".fgsm:FGSM",
    "pgd": ".pgd:PGD",
    "pgd_l2": ".pgd_l2:PGDL2",
    "cw_linf": ".cw_linf:CWLinf",
    "square": ".square:Square",                 # black-box (score-based)
    "autoattack": ".autoattack:AutoAttack",     # APGD-CE, APGD-T, Square through ART
    "ensemble": ".ensemble:Ensemble",           # per-sample worst case over member attacks
    "eyeglass": ".eyeglass:EyeglassAttack",     # physical: inside an eyeglass-frame mask
    "face_mask": ".face_mask:FaceMaskAttack",   # physical: low-frequency lower-face occlusion
    "roa": ".roa:ROA",                          # physical: rectangular occlusion
})


def build_attack(name: str, *, bounds: tuple[float, float], **params):
    """The registered attack ``name`` built with the data's ``bounds`` and its own params."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; accepted: {sorted(accepted)}")
    return cls(bounds=bounds, **params)


lazy_package(__name__, {
    "Attack": "._base:Attack",
    "StagedAttack": "._base:StagedAttack",
    **{name: f"._objectives:{name}" for name in ("CrossEntropy", "CWMargin", "Objective", "ReferenceKL",
                                                  "SoftTargetKL", "UniformTargetKL", "cw_margin")},
    **{target.split(":")[1]: target for target in ATTACKS._targets.values()},
})
