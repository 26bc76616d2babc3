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
from distfair.models.m5 import M5, M5Tricks
from distfair.models.mlp import MLP
from distfair.models.mobilenet_v2_cifar import MobileNetV2
from distfair.models.preact_resnet import PreActResNet18
from distfair.models.resnet_cifar import ResNet18
from distfair.models.torchvision_nets import VGG16, ViTB16
from distfair.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "cnn1d": CNN1D,
    "preact_resnet18": PreActResNet18,
    "mlp": MLP,
    "vgg16": VGG16,
    "vit_b_16": ViTB16,
    "resnet18": ResNet18,
    "mobilenet_v2": MobileNetV2,
    "wide_resnet": WideResNet,
    "m5": M5,
    "m5_tricks": M5Tricks,
}

#: arguments supplied by the dataset, not by the user's config
MODEL_DATA_ARGS = ("num_classes", "in_shape")


def build_model(name: str, *, num_classes: int, in_shape: tuple, **params) -> nn.Module:
    """Instantiate the registered model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_shape=tuple(in_shape), **params)


def checkpoint_model_spec(state: dict) -> dict:
    """``{"name", "options", "num_classes", "in_shape"}`` of the model an epoch checkpoint
    (``distfair.engine.train.save_checkpoint``) holds; ValueError naming what is missing."""
    missing = [k for k in ("model", "model_name", "num_classes", "in_shape") if k not in state]
    if missing:
        raise ValueError(f"not a distfair epoch checkpoint (no {', '.join(missing)})")
    options = dict(state.get("model_config") or {})
    options.pop("name", None)
    return {"name": state["model_name"], "options": options, "num_classes": int(state["num_classes"]),
            "in_shape": tuple(state["in_shape"])}


def model_from_checkpoint(path, device="cpu") -> nn.Module:
    """The trained model of an epoch checkpoint (``last.pt``), rebuilt from the architecture
    the checkpoint records (registry name, options, classes, input shape) with its weights, in
    eval mode, on ``device``. Used for teachers (FERD) and ``train.init_from``-like reuse."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    spec = checkpoint_model_spec(state)
    model = build_model(spec["name"], num_classes=spec["num_classes"], in_shape=spec["in_shape"], **spec["options"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


__all__ = ["MODELS", "MODEL_DATA_ARGS", "Normalize", "build_model", "checkpoint_model_spec", "model_from_checkpoint",
           "unwrap_model"]
