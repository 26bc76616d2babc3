"""Adversarial face mask: a grid-level, low-frequency occlusion of the lower face
(Sy-FAR App. E, after FaceSec: Tong et al., CVPR 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._base import _check_int
from distfair.attacks._masks import BestIterate, MaskMomentumAttack, image_shape, objective, resolve_mask


class FaceMaskAttack(MaskMomentumAttack):
    """Face-mask attack: a smooth colour pattern composited over the lower face.

    Paper: Sy-FAR (Najjar, Ronen & Sharif), App. E "Extended Attack Evaluation: Face Masks":
    a face-mask attack inspired by FaceSec (Tong, Chen, Ni, Cheng, Song, Chen & Vorobeychik,
    "FaceSec: A Fine-grained Robustness Evaluation Framework for Face Recognition Systems",
    CVPR 2021, Sy-FAR's reference [53]) that works at the *grid level*: it occludes the lower
    face (nose and mouth) with a large, low-frequency, spatially coherent pattern, unlike
    the pixel-level eyeglass attack. Sy-FAR gives no step count or grid size; the defaults
    below are ours (see Args).

    Parametrisation: per sample a coarse colour grid P of shape (C, grid, grid), upsampled
    bilinearly (align_corners=True, so values stay inside the range of P) to the bounding box of
    the mask and composited as x·(1 − m) + pattern·m. With ``eps`` given the composite is then
    projected onto the ε-ball around the clean x and onto ``bounds`` (inside the mask only; the
    gradient passes the projection straight through). P starts at mid-grey (the middle of
    ``bounds``) and is optimised by signed-gradient ascent with momentum (MI-FGSM, Dong et al.,
    CVPR 2018, §3.1): g ← μ·g + ∇_P/‖∇_P‖₁, P ← clamp(P + α·sign(g), bounds). The objective is
    CE(f(x), y) (untargeted) or −CE(f(x), target) (targeted). Returned per sample: the first
    iterate (the clean x included) that reaches the goal — misclassified (untargeted), predicted
    as the target (targeted) — else the one with the lowest margin to it
    (:class:`~distfair.attacks._masks.BestIterate`); the loop stops once every sample has
    succeeded. Pixels outside the mask are returned exactly as given.

    Args (keyword-only):
        eps: ℓ∞ budget inside the mask, in input units; default None: no budget beyond
            ``bounds`` (a physical mask replaces the pixels).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        mask: path of a mask image (grey > 0.5 = mask), resized with nearest neighbour to
            (H, W); default None: the generated
            :func:`~distfair.attacks._masks.lower_face_mask`.
        grid: cells per side of the colour grid; default 8 (8 × 8 cells per channel: 192
            parameters for RGB, ~20 × 20-pixel cells on a 224 face: low-frequency). >= 1.
        steps: ascent iterations; default 100 (ROA's inner budget in Sy-FAR §5). >= 1.
        alpha: step on the grid values, in input units; default None: 20/255 of the range,
            capped at eps/4 when ``eps`` is given. > 0.
        momentum: decay μ of the accumulated gradient; default 1.0 (MI-FGSM). >= 0.

    Shapes: x (B, C, H, W) (a (B, C, L) or (B, D) input is a one-row image); y and target
    (B,). Returns x_adv with x's shape, dtype and device, in ``bounds``, equal to x outside
    the mask and within eps of x inside it.

    Example:
        >>> x_adv = FaceMaskAttack(grid=8, steps=100)(model, faces, labels)
    """

    name = "face_mask"

    def __init__(self, *, eps: float | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 target_mode: str = "none", mask: str | None = None, grid: int = 8, steps: int = 100,
                 alpha: float | None = None, momentum: float = 1.0):
        self._init_options(eps, bounds, target_mode, mask=mask, steps=steps, alpha=alpha, momentum=momentum)
        self.grid = _check_int("grid", grid, minimum=1)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        b, c, h, w = image_shape(x)
        x4 = x.reshape(b, c, h, w)
        inside = resolve_mask(self.mask, "lower_face", h, w, device=x.device, dtype=x.dtype).bool()
        rows, cols = inside.any(dim=1).nonzero().squeeze(1), inside.any(dim=0).nonzero().squeeze(1)
        r0, r1, c0, c1 = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
        inside = inside[None, None]
        low, high = self.bounds

        def composite(params: Tensor) -> Tensor:
            box = F.interpolate(params, size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=True)
            pattern = F.pad(box, (c0, w - c1, r0, h - r1))
            # straight-through projection: forward projected, backward identity, so cells
            # clipped by the ε-ball still get a gradient (a no-op without a budget)
            projected = pattern + (self._project(pattern, x4) - pattern).detach()
            return torch.where(inside, projected, x4)

        with torch.no_grad():
            best = BestIterate(x4, objective(model, x4, x.shape, y, target)[2], y, target)
        params = torch.full((b, c, self.grid, self.grid), (low + high) / 2, dtype=x.dtype, device=x.device)
        g = torch.zeros_like(params)
        for _ in range(self.steps):
            p_var = params.detach().requires_grad_(True)
            x_adv = composite(p_var)
            _, grad, logits = objective(model, x_adv, x.shape, y, target, grad_of=p_var)
            best.update(x_adv, logits)
            if best.done.all():  # every sample frozen at its first success
                return best.x.reshape(x.shape)
            norm = grad.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            g = self.momentum * g + grad / norm
            params = (params + self.step_size * g.sign()).clamp(low, high)
        with torch.no_grad():
            x_adv = composite(params)
            best.update(x_adv, objective(model, x_adv, x.shape, y, target)[2])
        return best.x.reshape(x.shape)
