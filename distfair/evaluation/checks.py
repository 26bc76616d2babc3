"""Evaluation self-checks (AutoAttack's sanity checks, Croce & Hein ICML 2020 §5 / their
``checks.py`` idea, methods.md "Attacks"): plain PyTorch, no Ray, no MLflow.

Each check returns a list of findings ``{"check": <id>, "message": <text>}``; an empty list
means it passed. The evaluation suite (``suite.py``) logs findings as warnings and the
tracking layer records them as MLflow tags ``distfair.check.<id>`` on the seed run. None of
them stops a run: a finding is a reason to distrust a number, not an error in the program.

- ``robust_above_clean``: an attack's accuracy above the clean accuracy (an attack that
  helps the model is broken, or the evaluation is randomised and unreliable).
- ``zero_gradients``: samples whose input gradient of the loss is exactly zero (a sign of
  gradient masking or of saturated/quantised outputs: white-box attacks see nothing).
- ``black_box_beats_white_box``: samples a black-box attack broke while every white-box
  attack failed on them (the white-box attacks are being obfuscated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _finding(check: str, message: str) -> dict:
    return {"check": check, "message": message}


def robust_above_clean(clean_acc: float, attack_accs: dict[str, float]) -> list[dict]:
    return [_finding(f"robust_above_clean.{name}",
                     f"attack {name!r}: accuracy {acc:.4f} is above the clean accuracy {clean_acc:.4f}")
            for name, acc in attack_accs.items() if acc > clean_acc]


def zero_gradient_fraction(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of samples whose input gradient of the summed cross-entropy is all zero.

    Evaluated in eval mode; the model's mode and parameter ``.grad`` are left as they were.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    zero = grad.flatten(1).abs().amax(dim=1) == 0
    return float(zero.float().mean())


def zero_gradients(fraction: float, n: int) -> list[dict]:
    if fraction <= 0:
        return []
    return [_finding("zero_gradients", f"{fraction:.1%} of {n} checked samples have an all-zero input "
                     "gradient: gradient-based attacks cannot move them (gradient masking?)")]


def black_box_beats_white_box(correct_clean: Tensor, white_box_robust: list[Tensor],
                              black_box_robust: dict[str, Tensor]) -> list[dict]:
    """``white_box_robust``: per-sample robust flags of every white-box attack (or ensemble
    stage); ``black_box_robust``: label -> flags of each black-box attack (or stage)."""
    if not white_box_robust or not black_box_robust:
        return []
    survived = correct_clean.clone()
    for flags in white_box_robust:
        survived &= flags
    out = []
    for label, flags in black_box_robust.items():
        n = int((survived & ~flags).sum())
        if n:
            out.append(_finding(f"black_box_beats_white_box.{label}",
                                f"black-box attack {label!r} broke {n} sample(s) that every white-box attack "
                                f"failed on ({int(survived.sum())} survived them): the white-box attacks "
                                "are likely obfuscated"))
    return out
