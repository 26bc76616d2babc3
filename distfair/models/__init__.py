"""Models: plain PyTorch modules taking inputs in their natural range and returning logits.

Adding a model is one file plus one line in ``MODELS``. Every constructor takes keyword-only
``num_classes`` and ``in_shape`` (filled in from the dataset) plus its own options, which the
config validator reads from the signature.
"""
from __future__ import annotations

from torch import nn

from distfair.models._base import Normalize, unwrap_model
from distfair.models.cnn1d import CNN1D
from distfair.models.digits_cnn import DigitsCNN
from distfair.models.mlp import MLP
from distfair.models.preact_resnet import PreActResNet18
from distfair.models.torchvision_nets import VGG16, ViTB16

MODELS: dict[str, type[nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "cnn1d": CNN1D,
    "preact_resnet18": PreActResNet18,
    "mlp": MLP,
    "vgg16": VGG16,
    "vit_b_16": ViTB16,
}

#: arguments supplied by the dataset, not by the user's config
MODEL_DATA_ARGS = ("num_classes", "in_shape")


def build_model(name: str, *, num_classes: int, in_shape: tuple, **params) -> nn.Module:
    """Instantiate the registered model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_shape=tuple(in_shape), **params)


__all__ = ["MODELS", "MODEL_DATA_ARGS", "build_model", "Normalize", "unwrap_model"]
