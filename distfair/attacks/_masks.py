"""Masks for the physical face attacks, as data, plus the bookkeeping those attacks share.

A mask is an (H, W) float tensor of {0, 1}: 1 where the attack may change pixels. It is
either a file (any image PIL reads: grey, RGB or RGBA, resized with nearest neighbour to
the input's (H, W) and thresholded at 0.5) or a default generated for any (H, W):

- :func:`eyeglass_mask`: an eyeglass frame (two elliptic lens rims and a bridge) around
  the eye line, as in Sharif et al., CCS 2016, §4 (the attack Sy-FAR uses, §5 and App. E);
- :func:`lower_face_mask`: the lower face (nose and mouth) that a face mask occludes
  (Sy-FAR App. E, after FaceSec, Tong et al., CVPR 2021).

The generated masks assume an aligned, roughly centred face (eyes at ~40 % of the height,
as in VGGFace/PubFig crops); for other crops pass a mask file.

Inputs of the physical attacks are images (B, C, H, W); a 3-D input (B, C, L) is read as
(B, C, 1, L) and a 2-D input (B, D) as (B, 1, 1, D) (one-row images), so every registered
attack accepts the same inputs.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distfair.attacks._base import Attack, _check_int, _check_real
from distfair.attacks._objectives import cw_margin


def _grid(height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (rows, cols), each (H, W), float64."""
    for param, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{param} must be an int >= 1, got {value!r}")
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    return torch.meshgrid(rows, cols, indexing="ij")


def eyeglass_mask(height: int, width: int) -> Tensor:
    """A default eyeglass frame for an (H, W) aligned face: (H, W) float32 in {0, 1}.

    Two elliptic lens rims centred on the eye line (40 % of the height, 31 % and 69 % of the
    width; semi-axes 16 % of the width by 10 % of the height) and a bridge between them. The
    rim thickness is 4.4 % of the smaller side (10 pixels at 224), at least ~1.5 pixels, so
    the frame stays non-empty and connected down to 6 × 6 images.
    """
    r, c = _grid(height, width)
    cy, a, b = 0.40 * height, 0.16 * width, 0.10 * height
    half = max(0.75, 0.022 * min(height, width))  # half the rim thickness, in pixels
    mask = torch.zeros(height, width, dtype=torch.bool)
    for cx in (0.31 * width, 0.69 * width):
        u, v = (c - cx) / a, (r - cy) / b
        rho = torch.sqrt(u ** 2 + v ** 2)
        # distance to the ellipse ≈ |ρ − 1| / |∇ρ| (first order), |∇ρ| = √(u²/a² + v²/b²) / ρ
        grad = torch.sqrt((u / a) ** 2 + (v / b) ** 2) / rho.clamp_min(1e-12)
        mask |= (rho - 1).abs() <= half * grad.clamp_min(1e-12)
    bridge_y = cy - 0.3 * b
    inner = (0.31 * width + a, 0.69 * width - a)
    mask |= ((r - bridge_y).abs() <= half) & (c >= inner[0] - half) & (c <= inner[1] + half)
    return mask.float()


def lower_face_mask(height: int, width: int) -> Tensor:
    """A default face-mask region for an (H, W) aligned face: (H, W) float32 in {0, 1}.

    The lower half-ellipse with a flat top at 52 % of the height (the nose), horizontal
    semi-axis 33 % of the width and vertical semi-axis 43 % of the height (down to the
    chin): the nose and mouth that a surgical mask covers. Non-empty for any (H, W) ≥ 1
    (the pixel under the centre of the region is always included).
    """
    r, c = _grid(height, width)
    top, cx, a, b = 0.52 * height, 0.5 * width, 0.33 * width, 0.43 * height
    mask = (r >= top) & (((c - cx) / a) ** 2 + ((r - top) / b) ** 2 <= 1)
    mask[min(int(0.7 * height), height - 1), min(int(cx), width - 1)] = True
    return mask.float()


def load_mask(path: str, height: int, width: int) -> Tensor:
    """The mask in the image file ``path`` at (H, W): grey, nearest-neighbour resize, > 0.5.

    Raises FileNotFoundError when ``path`` is not a file and ValueError when it cannot be
    read as an image or is all zero at (H, W), both naming the path.
    """
    from PIL import Image, UnidentifiedImageError

    _grid(height, width)  # validates the size
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file not found: {path!r}")
    try:
        with Image.open(path) as image:
            grey = image.convert("L").resize((width, height), Image.Resampling.NEAREST)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"mask file {path!r} is not a readable image: {err}") from err
    mask = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0 >= 0.5).float()
    if not mask.any():
        raise ValueError(f"mask file {path!r} is all zero at {height}x{width} (threshold 0.5): nothing to perturb")
    return mask


@functools.lru_cache(maxsize=32)
def _cached_mask(kind: str, path: str | None, mtime_ns: int, height: int, width: int) -> Tensor:
    if path is not None:
        return load_mask(path, height, width)
    return eyeglass_mask(height, width) if kind == "eyeglass" else lower_face_mask(height, width)


def resolve_mask(mask: str | None, default: str, height: int, width: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """The (H, W) mask on ``device``: the file ``mask``, or the generated ``default``
    ("eyeglass" or "lower_face") when ``mask`` is None. Cached per (file, H, W); a file
    rewritten on disk (new modification time) is read again. Returns a fresh tensor."""
    if default not in ("eyeglass", "lower_face"):
        raise ValueError(f"default must be 'eyeglass' or 'lower_face', got {default!r}")
    mtime = 0
    if mask is not None:
        if not os.path.isfile(mask):
            raise FileNotFoundError(f"mask file not found: {mask!r}")
        mtime = os.stat(mask).st_mtime_ns
    return _cached_mask(default, mask, mtime, height, width).to(device=device, dtype=dtype, copy=True)


def check_mask_param(mask) -> str | None:
    """Constructor check of a ``mask`` option: None or the path of an existing file."""
    if mask is None:
        return None
    if not isinstance(mask, str) or not mask:
        raise ValueError(f"mask must be None or a non-empty path string, got {mask!r}")
    if not os.path.isfile(mask):
        raise FileNotFoundError(f"mask file not found: {mask!r} (parameter mask)")
    return mask


# Bookkeeping shared by the physical attacks (eyeglass, face_mask, roa).
def image_shape(x: Tensor) -> tuple[int, int, int, int]:
    """(B, C, H, W) view of x: 4-D as is, (B, C, L) → (B, C, 1, L), (B, D) → (B, 1, 1, D)."""
    if x.ndim == 4:
        return tuple(x.shape)
    if x.ndim == 3:
        return x.shape[0], x.shape[1], 1, x.shape[2]
    if x.ndim == 2:
        return x.shape[0], 1, 1, x.shape[1]
    raise ValueError(f"x must be images (B, C, H, W) (or (B, C, L), (B, D)), got shape {tuple(x.shape)}")


def objective(model: nn.Module, x4: Tensor, shape: torch.Size, y: Tensor, target: Tensor | None, *,
              grad_of: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """(objective, gradient, logits) of the model at ``x4``.

    The objective to increase, (B,): CE(f(x), y) untargeted, −CE(f(x), target) targeted.
    ``x4`` is in the (B, C, H, W) view and is reshaped to the model's ``shape``. With
    ``grad_of`` (a tensor requiring grad that x4 depends on), the gradient of the summed
    objective w.r.t. it via ``torch.autograd.grad`` (parameters' .grad untouched), else None.
    The logits (B, K) come back detached, for :class:`BestIterate`.
    """
    logits = model(x4.reshape(shape))
    if logits.ndim != 2:
        raise ValueError(f"model must return logits of shape (B, K), got {tuple(logits.shape)}")
    obj = (F.cross_entropy(logits, y, reduction="none") if target is None
           else -F.cross_entropy(logits, target, reduction="none"))
    grad = None
    if grad_of is not None:
        (grad,) = torch.autograd.grad(obj.sum(), grad_of)
    return obj.detach(), grad, logits.detach()


def goal_margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Distance to the attack's goal per sample, (B,); lower is closer, < 0 is reached.

    Untargeted: z_y − max_{j≠y} z_j (the true class's lead); targeted: max_{j≠t} z_j − z_t
    (how far the target trails). The Carlini–Wagner margin (IEEE S&P 2017, §V).
    """
    return cw_margin(logits, y) if target is None else -cw_margin(logits, target)


def goal_reached(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(B,) bool: misclassified (untargeted) or predicted as the target (targeted), by argmax,
    as the evaluation counts a success."""
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target


class BestIterate:
    """Per sample, the iterate an attack returns: the first that reaches the goal, else the
    one with the lowest :func:`goal_margin`.

    Sy-FAR §3 (threat model): "the adversary's goal is to maximize their success rate",
    success being any misclassification (untargeted) or the target class (targeted), so
    success is what is kept: the first successful iterate is frozen (an attack that stops at
    its goal; ``ensemble.sequential`` likewise keeps the first member that breaks a sample),
    and a later iterate replaces a failed one only when it succeeds or strictly lowers the
    margin. The highest cross-entropy is *not* the criterion:
    a correctly classified iterate can have a higher CE than a misclassified one (a flatter
    softmax), so keeping the highest CE could return a failed iterate after a successful one.
    Starts from the clean x, so the result is never further from the goal than x (and a clean
    x that already reaches the goal is returned as is).
    """

    def __init__(self, x4: Tensor, logits: Tensor, y: Tensor, target: Tensor | None):
        self.y, self.target = y, target
        self.x = x4.detach().clone()
        self.margin = goal_margin(logits, y, target)
        self.done = goal_reached(logits, y, target)

    def update(self, x4: Tensor, logits: Tensor) -> None:
        margin, reached = goal_margin(logits, self.y, self.target), goal_reached(logits, self.y, self.target)
        replace = ~self.done & (reached | (margin < self.margin))
        self.margin = torch.where(replace, margin, self.margin)
        self.done = self.done | reached
        self.x = torch.where(replace.view(-1, *([1] * (x4.ndim - 1))), x4.detach(), self.x)


def init_budget(attack, eps: float | None, bounds, target_mode: str) -> None:
    """``Attack.__init__`` with ``eps=None`` meaning no budget beyond the range: the base
    gets high − low, so its ε-ball projection is a no-op."""
    Attack.__init__(attack, eps=0.0 if eps is None else eps, bounds=bounds, target_mode=target_mode)
    attack.budget = eps
    if eps is None:
        attack.eps = attack.bounds[1] - attack.bounds[0]


class MaskMomentumAttack(Attack):
    """Shared options of the mask-driven momentum attacks (eyeglass, face mask): subclasses
    keep their own annotated ``__init__`` (the config validator reads it) and call
    ``_init_options``."""

    norm = "patch"

    def _init_options(self, eps: float | None, bounds, target_mode: str, *, mask, steps: int,
                      alpha: float | None, momentum: float) -> None:
        init_budget(self, eps, bounds, target_mode)
        self.mask = check_mask_param(mask)
        self.steps = _check_int("steps", steps, minimum=1)
        if alpha is not None:
            alpha = _check_real("alpha", alpha)
            if not alpha > 0:
                raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.momentum = _check_real("momentum", momentum)
        if not self.momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")

    @property
    def step_size(self) -> float:
        """``alpha``, or 20/255 of the range (at most eps/4 with a budget) when None."""
        if self.alpha is not None:
            return self.alpha
        step = 20 / 255 * (self.bounds[1] - self.bounds[0])
        return step if self.budget is None else min(step, self.budget / 4)
