"""Rectangular Occlusion Attack (Wu, Tong & Vorobeychik, ICLR 2020; as used by Sy-FAR §5)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from distfair.attacks._base import Attack, _check_int, _check_real
from distfair.attacks._masks import BestIterate, image_shape, init_budget, objective

#: FaceSec / Sy-FAR defaults at 224 × 224 pixels: a 70 × 70 rectangle searched at stride 10
REFERENCE_SIZE, REFERENCE_SIDE, REFERENCE_STRIDE = 70, 224, 10


def scaled_geometry(height: int, width: int) -> tuple[int, int]:
    """Default (size, stride) for an (H, W) image: 70 and 10 scaled by min(H, W)/224,
    rounded half up, at least 1 (224 → (70, 10), 112 → (35, 5), 32 → (10, 1), 6 → (2, 1))."""
    side = min(height, width)
    scale = lambda ref: max(1, int(ref * side / REFERENCE_SIDE + 0.5))  # noqa: E731
    return scale(REFERENCE_SIZE), scale(REFERENCE_STRIDE)


def positions(height: int, width: int, size: int, stride: int) -> Tensor:
    """Top-left corners (P, 2) of the searched rectangles, raster order: every ``stride``
    pixels from 0, plus the last position (H − size, W − size) so the far edges are covered."""
    def axis(n: int) -> list[int]:
        starts = list(range(0, n - size + 1, stride))
        return starts if starts[-1] == n - size else starts + [n - size]
    rows, cols = axis(height), axis(width)
    return torch.tensor([(r, c) for r in rows for c in cols], dtype=torch.long)


def rectangles(corners: Tensor, height: int, width: int, size: int) -> Tensor:
    """Boolean masks (N, 1, H, W) of the size × size rectangles at ``corners`` (N, 2)."""
    r = torch.arange(height, device=corners.device)
    c = torch.arange(width, device=corners.device)
    in_r = (r[None] >= corners[:, :1]) & (r[None] < corners[:, :1] + size)
    in_c = (c[None] >= corners[:, 1:]) & (c[None] < corners[:, 1:] + size)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


class ROA(Attack):
    """Rectangular Occlusion Attack: the most damaging position of a grey rectangle, then PGD
    inside it.

    Paper: Wu, Tong & Vorobeychik, "Defending against Physically Realizable Attacks on Image
    Classification", ICLR 2020 (the ROA threat model: a rectangle placed anywhere, with
    arbitrary content, computed by an exhaustive search of its position with a grey fill,
    then PGD on its content). Sy-FAR (Najjar, Ronen & Sharif) §5 "Defenses and Baselines" trains every
    face model against it with FaceSec's defaults (Tong et al., CVPR 2021): a 70 × 70
    rectangle at stride (10, 10) on 224 × 224 faces, 100 iterations of step 20/255, the
    occlusion initialised to mid-grey.

    Algorithm, per sample: (1) for every position of :func:`positions`, fill the rectangle with
    grey (the middle of ``bounds``; projected onto the ε-ball when ``eps`` is given) and keep
    the position with the highest objective (ties: the first in raster order); positions are
    evaluated in chunks of at most ``search_batch`` images per forward pass; (2) start from the
    grey fill (or uniform noise with ``random_start``) and run ``steps`` PGD steps x ← Π(x +
    α·sign(∇)) inside the chosen rectangle only (Π: ε-ball around the clean x, then ``bounds``).
    The objective is CE(f(x), y) (untargeted) or −CE(f(x), target) (targeted). Returned per
    sample: the first iterate (the clean x included) that reaches the goal — misclassified
    (untargeted), predicted as the target (targeted) — else the one with the lowest margin to it
    (:class:`~distfair.attacks._masks.BestIterate`); the loop stops once every sample has
    succeeded. Pixels outside the rectangle are returned exactly as given.

    Args (keyword-only):
        eps: ℓ∞ budget inside the rectangle, in input units; default None: no budget beyond
            ``bounds`` (the occlusion replaces the pixels, as in the paper).
        bounds: valid input range (low, high); default (0.0, 1.0).
        target_mode: "none" (default) or "random".
        size: side of the square rectangle in pixels; default None: 70 scaled to the image
            (:func:`scaled_geometry`: 70 at 224, 10 at 32). >= 1 and <= min(H, W).
        stride: search stride in pixels; default None: 10 scaled the same way, at least 1.
        steps: PGD iterations inside the rectangle; default 100; 0 keeps the grey fill.
        alpha: PGD step in input units; default 20/255 (the paper's 20 in 0-255 pixels;
            use 40/255 for data in [-1, 1]). > 0.
        random_start: start the PGD from U(bounds) inside the rectangle instead of grey,
            drawn with the call's generator; default False (the paper's mid-grey).
        search_batch: most images per forward pass during the search; default 256. >= 1.

    Shapes: x (B, C, H, W) (a (B, C, L) or (B, D) input is a one-row image); y and target
    (B,). Returns x_adv with x's shape, dtype and device, in ``bounds``, equal to x outside
    one size × size rectangle.

    Example:
        >>> defense = build_defense("pgd_at", attack=ROA(), num_classes=10)
    """

    name = "roa"
    norm = "patch"

    def __init__(self, *, eps: float | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 target_mode: str = "none", size: int | None = None, stride: int | None = None,
                 steps: int = 100, alpha: float = 20 / 255, random_start: bool = False, search_batch: int = 256):
        init_budget(self, eps, bounds, target_mode)
        self.size = None if size is None else _check_int("size", size, minimum=1)
        self.stride = None if stride is None else _check_int("stride", stride, minimum=1)
        self.steps = _check_int("steps", steps, minimum=0)
        self.alpha = _check_real("alpha", alpha)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be a bool, got {random_start!r}")
        self.random_start = random_start
        self.search_batch = _check_int("search_batch", search_batch, minimum=1)

    @property
    def step_size(self) -> float:
        """The signed-gradient step inside the rectangle: ``alpha``."""
        return self.alpha

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        """(size, stride) used for an (H, W) image; ValueError if the rectangle does not fit."""
        size, stride = scaled_geometry(height, width)
        size = size if self.size is None else self.size
        stride = stride if self.stride is None else self.stride
        if size > min(height, width):
            raise ValueError(f"size must be <= the image's height and width ({height}x{width}), got {size}")
        return size, stride

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
        b, c, h, w = image_shape(x)
        x4 = x.reshape(b, c, h, w)
        size, stride = self.geometry(h, w)
        low, high = self.bounds
        corners = positions(h, w, size, stride).to(x.device)

        with torch.no_grad():
            best = BestIterate(x4, objective(model, x4, x.shape, y, target)[2], y, target)
            grey = self._project(torch.full_like(x4, (low + high) / 2), x4)
            best_obj = torch.full((b,), -float("inf"), dtype=best.margin.dtype, device=x.device)
            best_idx = torch.zeros(b, dtype=torch.long, device=x.device)
            chunk = max(1, self.search_batch // b)
            for start in range(0, len(corners), chunk):
                rects = rectangles(corners[start:start + chunk], h, w, size)  # (k, 1, H, W)
                k = len(rects)
                cand = torch.where(rects[:, None], grey[None], x4[None]).reshape(k * b, c, h, w)
                obj = objective(model, cand, (k * b, *x.shape[1:]), y.repeat(k),
                                None if target is None else target.repeat(k))[0].view(k, b)
                chunk_obj, chunk_arg = obj.max(dim=0)
                better = chunk_obj > best_obj
                best_obj = torch.where(better, chunk_obj, best_obj)
                best_idx = torch.where(better, start + chunk_arg, best_idx)

        inside = rectangles(corners[best_idx], h, w, size)  # (B, 1, H, W)
        fill = grey
        if self.random_start:
            device = generator.device if generator is not None else x.device
            noise = torch.rand(x4.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
            fill = self._project(low + (high - low) * noise, x4)
        x_adv = torch.where(inside, fill, x4)
        for _ in range(self.steps):
            x_var = x_adv.detach().requires_grad_(True)
            _, grad, logits = objective(model, x_var, x.shape, y, target, grad_of=x_var)
            best.update(x_adv, logits)
            if best.done.all():  # every sample frozen at its first success
                return best.x.reshape(x.shape)
            x_adv = torch.where(inside, self._project(x_adv + self.alpha * grad.sign(), x4), x4)
        with torch.no_grad():
            best.update(x_adv, objective(model, x_adv, x.shape, y, target)[2])
        return best.x.reshape(x.shape)
