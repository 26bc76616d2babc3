"""VGG-16 and ViT-B/16 from torchvision, for the face-recognition protocol of Sy-FAR §5.

Sy-FAR fine-tunes VGG-16 (Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015) on PubFig and PubFig_SIB, and a Vision
Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) on PubFig_ViT
(Sy-FAR §5, Table 1). Inputs are images in [0, 1] of shape (B, 3, H, W); the ImageNet
mean/std normalisation is inside the model (a ``Normalize`` with buffers); logits (B, K).

Nothing is ever downloaded: torchvision is always called with ``weights=None``. ``weights``
names a LOCAL file holding a torchvision ImageNet state dict of the same architecture (as
saved by ``torch.save(model.state_dict(), path)``; a dict with a "state_dict" or "model" key
holding it is accepted too, and a "module." prefix left by DataParallel/DDP is dropped). It
is loaded strictly into the full torchvision model, 1000-class head included; then the head
is replaced by a fresh ``nn.Linear`` to ``num_classes`` (VGG: ``classifier[6]``, ViT:
``heads.head``). For ViT the one allowed difference is the positional embedding's grid: an
ImageNet checkpoint at 224 px is resized (bicubic, torchvision's ``interpolate_embeddings``)
to the model's ``image_size``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import vgg16, vit_b_16
from torchvision.models.vision_transformer import interpolate_embeddings

from distfair.models._base import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_rgb(arch: str, in_shape: tuple, min_side: int) -> tuple[int, int]:
    in_shape = tuple(in_shape)
    if len(in_shape) != 3 or in_shape[0] != 3:
        raise ValueError(f"{arch} expects RGB inputs of shape (3, H, W), got {in_shape}")
    _, h, w = in_shape
    if h < min_side or w < min_side:
        raise ValueError(f"{arch} needs images of at least {min_side}x{min_side}, got input shape {in_shape}")
    return h, w


def _read_state_dict(path: str, arch: str) -> dict[str, torch.Tensor]:
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{arch} weights file {path!r} not found (weights are never downloaded: "
                                f"give a local torchvision ImageNet state dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"cannot read {arch} weights file {path!r}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{arch} weights file {path!r} holds no state dict (a mapping of names to "
                         f"tensors, possibly under 'state_dict' or 'model')")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: str, arch: str) -> None:
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            problems.append("shape mismatches: " + _listing(
                [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]))
        raise ValueError(f"{arch} weights file {path!r} does not match torchvision's {arch} "
                         f"({'; '.join(problems)})")
    net.load_state_dict(state, strict=True)


class VGG16(nn.Module):
    """torchvision VGG-16 (no batch norm), ImageNet normalisation inside, fresh K-way head.

    ``feature_layer`` = ``"net.features"``: the convolutional trunk, output
    (B, 512, H/32, W/32) after its last max-pool (the features FERD's information bottleneck
    hooks, Eq. 4).
    """

    feature_layer = "net.features"

    def __init__(self, *, num_classes: int, in_shape: tuple, weights: str | None = None):
        super().__init__()
        _check_rgb("vgg16", in_shape, min_side=32)  # five 2x2 max-pools
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        state = None if weights is None else _read_state_dict(weights, "vgg16")  # fail before building
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, channel_dims=2)
        net = vgg16(weights=None)
        if state is not None:
            _load_strict(net, state, weights, "vgg16")
        net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class ViTB16(nn.Module):
    """torchvision ViT-B/16 at ``image_size`` = H = W (a multiple of 16), fresh K-way head."""

    def __init__(self, *, num_classes: int, in_shape: tuple, weights: str | None = None):
        super().__init__()
        h, w = _check_rgb("vit_b_16", in_shape, min_side=16)
        if h != w or h % 16:
            raise ValueError(f"vit_b_16 needs square images with a side divisible by 16 (patch size), "
                             f"got input shape {tuple(in_shape)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        state = None if weights is None else _read_state_dict(weights, "vit_b_16")  # fail before building
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, channel_dims=2)
        net = vit_b_16(weights=None, image_size=h)
        if state is not None:
            pos = state.get("encoder.pos_embedding")
            if (isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[0] == 1
                    and pos.shape[2] == net.hidden_dim and pos.shape != net.encoder.pos_embedding.shape):
                try:  # e.g. a 224-px ImageNet checkpoint used at 160 px
                    state = dict(interpolate_embeddings(h, 16, state))
                except ValueError as err:
                    raise ValueError(f"vit_b_16 weights file {weights!r}: cannot resize its positional "
                                     f"embedding {tuple(pos.shape)} to image size {h}: {err}") from err
            _load_strict(net, state, weights, "vit_b_16")
        net.heads.head = nn.Linear(net.heads.head.in_features, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
