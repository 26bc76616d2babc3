"""Adversarial eyeglasses (Sharif et al., CCS 2016; as used by Sy-FAR, §5 and App. E)."""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from distfair.attacks._masks import BestIterate, MaskMomentumAttack, image_shape, objective, resolve_mask


def palette(channels: int, low: float, high: float) -> list[tuple[float, ...]]:
    """Solid starting colours: the 8 corners of the RGB cube and mid-grey for 3 channels;
    5 grey levels (0, ¼, ½, ¾, 1 of the range) for any other channel count."""
    if channels == 3:
        corners = [tuple(low if bit == 0 else high for bit in bits) for bits in itertools.product((0, 1), repeat=3)]
        return corners + [((low + high) / 2,) * 3]
    return [(low + f * (high - low),) * channels for f in (0.0, 0.25, 0.5, 0.75, 1.0)]


class EyeglassAttack(MaskMomentumAttack):
    """Eyeglass-frame attack: perturb only the pixels under an eyeglass mask.

    Paper: Sharif, Bhagavatula, Bauer & Reiter, "Accessorize to a Crime: Real and Stealthy
    Attacks on State-of-the-Art Face Recognition", CCS 2016 (the frame is the only
    region the attacker controls; start from a solid colour); as used by Sy-FAR (Najjar,
    Ronen & Sharif) §5 "Attacks" and App. E: a fixed eyeglass-frame mask, initialised to the
    colour maximising the (mis)classification loss, refined with momentum, up to 300
    iterations, untargeted and targeted. The momentum update is MI-FGSM's (Dong et al.,
    "Boosting Adversarial Attacks with Momentum", CVPR 2018, §3.1, Alg. 1).

    Algorithm, per sample: (1) fill the mask with each colour of :func:`palette` (projected onto
    the ε-ball when ``eps`` is given, then onto ``bounds``) and start from the colour with the
    highest objective; (2) ``steps`` times: g ← μ·g + ∇/‖∇‖₁ (gradient restricted to the mask),
    x ← Π(x + α·sign(g)) inside the mask, where Π projects onto the ε-ball around the clean x,
    then onto ``bounds``. The objective is CE(f(x), y) (untargeted) or −CE(f(x), target)
    (targeted). Returned per sample: the first iterate (the clean x included) that reaches the
    goal — misclassified (untargeted), predicted as the target (targeted) — else the one with
    the lowest margin to it (:class:`~distfair.attacks._masks.BestIterate`); the loop stops once
    every sample has succeeded. Pixels outside the mask are returned exactly as given.

    Args (keyword-only):
        eps: ℓ∞ budget inside the mask, in input units; default None: no budget beyond
            ``bounds`` (the frame's colour is free, as in the paper).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        mask: path of a mask image (any format PIL reads; grey > 0.5 = frame), resized with
            nearest neighbour to the input's (H, W); default None: the generated
            :func:`~distfair.attacks._masks.eyeglass_mask`.
        steps: momentum iterations; default 300 (Sy-FAR's strongest setting). >= 1.
        alpha: step size in input units; default None: 20/255 of the range (the step of the
            public eyeglass reference code), capped at eps/4 when ``eps`` is given. > 0.
        momentum: decay μ of the accumulated gradient; default 1.0 (MI-FGSM). >= 0.

    Shapes: x (B, C, H, W) (a (B, C, L) or (B, D) input is a one-row image); y and target
    (B,). Returns x_adv with x's shape, dtype and device, in ``bounds``, equal to x outside
    the mask and within eps of x inside it.

    Example:
        >>> attack = EyeglassAttack(steps=300)
        >>> x_adv = attack(model, faces, labels)
    """

    name = "eyeglass"
    #: a tenth of the default steps: the contract checks (distfair.testing) in about a second
    TEST_OPTIONS = {"steps": 30}

    def __init__(self, *, eps: float | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 target_mode: str = "none", mask: str | None = None, steps: int = 300,
                 alpha: float | None = None, momentum: float = 1.0):
        self._init_options(eps, bounds, target_mode, mask=mask, steps=steps, alpha=alpha, momentum=momentum)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        b, c, h, w = image_shape(x)
        x4 = x.reshape(b, c, h, w)
        inside = resolve_mask(self.mask, "eyeglass", h, w, device=x.device, dtype=x.dtype).bool()[None, None]

        def place(candidate: Tensor) -> Tensor:  # ε-ball, then bounds, inside the mask only
            return torch.where(inside, self._project(candidate, x4), x4)

        with torch.no_grad():
            best = BestIterate(x4, objective(model, x4, x.shape, y, target)[2], y, target)
            start, start_obj = x4, torch.full_like(best.margin, -float("inf"))
            for colour in palette(c, *self.bounds):
                fill = place(torch.tensor(colour, dtype=x.dtype, device=x.device).view(1, c, 1, 1).expand_as(x4))
                obj = objective(model, fill, x.shape, y, target)[0]
                better = (obj > start_obj).view(-1, 1, 1, 1)
                start, start_obj = torch.where(better, fill, start), torch.maximum(obj, start_obj)

        x_adv, g = start, torch.zeros_like(x4)
        for _ in range(self.steps):
            x_var = x_adv.detach().requires_grad_(True)
            _, grad, logits = objective(model, x_var, x.shape, y, target, grad_of=x_var)
            best.update(x_adv, logits)
            if best.done.all():  # every sample frozen at its first success
                return best.x.reshape(x.shape)
            grad = torch.where(inside, grad, torch.zeros_like(grad))
            norm = grad.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            g = self.momentum * g + grad / norm
            x_adv = place(x_adv + self.step_size * g.sign())
        with torch.no_grad():
            best.update(x_adv, objective(model, x_adv, x.shape, y, target)[2])
        return best.x.reshape(x.shape)
