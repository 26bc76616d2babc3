"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019, §4 Eq. 5 and Alg. 1).

Per batch:

    CE(f(x), y) + β · KL(f(x) ‖ f(x_adv))

with f the softmax output, KL(P ‖ Q) = Σ_k P_k log(P_k / Q_k) per sample, averaged over the
batch (PyTorch's "batchmean" reduction: the sum divided by B, not by B·K). In PyTorch's
argument order this is ``F.kl_div(log f(x_adv), f(x))``, the reference code's
``KLDivLoss(size_average=False)(log_softmax(model(x_adv)), softmax(model(x))) / B``. Both
terms back-propagate through f(x) and f(x_adv) (as in the reference).

x_adv maximises the same KL, not the cross-entropy (Alg. 1 lines 4-7): start at
x + 0.001·N(0, 1), then ``steps`` signed-gradient steps of size ``alpha`` on
KL(f(x) ‖ f(x')) with f(x) fixed, each projected onto the ℓ∞ ε-ball around x and then
clamped to the attack's ``bounds``. ε, the step and the number of steps come from the
configured training attack (PGD: ``eps``, ``step_size``, ``steps``; an attack without steps,
e.g. FGSM: one step of size ε); its targeting mode is not used. The reference setting on CIFAR
is ε 0.031, step 0.007, 10 steps, β 6: set ε and the steps on the attack.
Threat model: white-box ℓ∞, radius ε in input units, inputs clamped to the data's range.
Only ℓ∞ is implemented (``attack_norms = {"linf"}``): a training attack with another threat
model (``pgd_l2``, the physical ``roa``/``eyeglass``/``face_mask``, ``square``/``autoattack``
with ``norm: l2``, a mixed ``ensemble``) is refused by the constructor and by the config
validator (``attack.name``), since its ε would otherwise silently become an ℓ∞ radius (ε 0.5
of PGD-ℓ2 as ‖δ‖∞ ≤ 0.5; the physical attacks' "no budget" ε as a whole-image perturbation).

Options: ``beta`` (≥ 0, default 6.0, the paper's 1/λ): weight of the robust KL term; β = 0
is plain clean cross-entropy training.
Shapes: x (B, ...) in the attack's ``bounds``, y (B,) class indices, model logits (B, K).
Components: ``clean_ce``, ``kl`` (the β-free robust term), ``adv_ce`` (CE at x_adv, logged only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks import Attack
from distfair.defenses._base import Defense, check_weight
from distfair.models import unwrap_model

#: std of the Gaussian start around x (Alg. 1 line 4; 0.001 in the reference code)
START_STD = 0.001


def trades_adversarial(model: nn.Module, x: Tensor, *, eps: float, step_size: float, steps: int,
                       bounds: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """x_adv ≈ argmax over the ℓ∞ ε-ball of KL(f(x) ‖ f(x')) (TRADES Alg. 1 lines 4-7).

    Runs ``model`` in eval mode and restores every submodule's previous mode afterwards;
    gradients w.r.t. the input only (``torch.autograd.grad``), parameter grads untouched. The
    start noise is drawn with ``generator`` (on its device, then moved to x's). Returns a
    detached tensor with x's shape, dtype and device, values in ``bounds``, ‖x_adv − x‖∞ ≤ eps.
    """
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            log_p_clean = F.log_softmax(model(x), dim=1)
        x_adv = x + START_STD * noise
        with torch.enable_grad():
            for _ in range(steps):
                x_adv = x_adv.detach().requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), log_p_clean, reduction="sum", log_target=True)
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = x_adv.detach() + step_size * grad.sign()
                x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps).clamp(*bounds)
    finally:
        for module, training in modes:
            module.training = training
    return x_adv.detach()


def attack_schedule(attack: Attack) -> tuple[float, float, int]:
    """(eps, step size, steps) of a training attack, as it declares them (``Attack.steps``,
    ``Attack.step_size``): PGD's own, one step of size ε for an attack without a schedule."""
    return float(attack.eps), float(attack.step_size), int(attack.steps)


class TRADES(Defense):
    name = "trades"
    attack_norms = frozenset({"linf"})
    adversarial_training = True

    def __init__(self, *, attack, num_classes: int, beta: float = 6.0):
        super().__init__(attack=attack, num_classes=num_classes)
        check_weight("beta", beta)
        if not math.isfinite(beta):
            raise ValueError(f"beta must be finite, got {beta}")
        self.beta = beta

    def loss(self, model, x, y, *, generator=None):
        eps, step, steps = attack_schedule(self.attack)
        x_adv = trades_adversarial(unwrap_model(model), x, eps=eps, step_size=step, steps=steps,
                                   bounds=self.attack.bounds, generator=generator)
        logits = model(x)
        adv_logits = model(x_adv)
        clean_ce = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.log_softmax(logits, dim=1),
                      reduction="batchmean", log_target=True)
        total = clean_ce + self.beta * kl
        return total, {"clean_ce": clean_ce.detach(), "kl": kl.detach(),
                       "adv_ce": F.cross_entropy(adv_logits.detach(), y)}
