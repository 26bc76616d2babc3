"""Models: plain PyTorch modules taking inputs in their natural range and returning logits.

Adding a model is one file plus one line in ``MODELS``. Every constructor takes keyword-only
``num_classes`` and ``in_shape`` (filled in from the dataset) plus its own options, which the
config validator reads from the signature. Entries are imported on first use
(``distfair.registry.Registry``): the configuration checks the names without importing PyTorch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from distfair.registry import Registry, lazy_package

if TYPE_CHECKING:
    from torch import nn

MODELS = Registry(__name__, {
    "digits_cnn": ".digits_cnn:DigitsCNN",
    "cnn1d": ".cnn1d:CNN1D",
    "preact_resnet18": ".preact_resnet:PreActResNet18",
    "mlp": ".mlp:MLP",
    "vgg16": ".torchvision_nets:VGG16",
    "vit_b_16": ".torchvision_nets:ViTB16",
    "resnet18": ".resnet_cifar:ResNet18",
    "mobilenet_v2": ".mobilenet_v2_cifar:MobileNetV2",
    "wide_resnet": ".wide_resnet:WideResNet",
    "m5": ".m5:M5",
    "m5_tricks": ".m5:M5Tricks",
})

#: arguments supplied by the dataset, not by the user's config
MODEL_DATA_ARGS = ("num_classes", "in_shape")
#: the most parameters a configured model may have (counted at validation on PyTorch's meta
#: device, so nothing is allocated): 23 times ViT-B/16, 8 GB of float32 weights
MAX_PARAMETERS = 2_000_000_000


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


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that holds more than plain data (a pickled object whose loading
    would run code): refused, never unpickled."""


def load_checkpoint(path, map_location="cpu"):
    """The contents of a checkpoint file, read with ``torch.load(weights_only=True)``: only
    tensors, numbers, strings and plain containers are rebuilt, so a file carrying a pickled
    payload (an object whose ``__reduce__`` runs code) is refused before any of it runs.
    Every checkpoint distfair reads (resume, ``train.init_from``, a defense's teacher) comes
    through here. Raises :class:`UnsafeCheckpointError` naming the file and the globals it
    asks for, ValueError naming the file when it is no checkpoint at all, FileNotFoundError."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:     # lists the globals the pickle names without importing or calling any of them
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: say what torch.load said
            unsafe = []
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path}: refused: the checkpoint holds pickled objects ({', '.join(unsafe[:5])}), not only "
                "tensors and plain data; distfair loads checkpoints with weights_only=True") from None
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if found:
            raise UnsafeCheckpointError(f"{path}: refused: {found[0]} (checkpoints are loaded with "
                                        "weights_only=True)") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint") from None
    except EOFError:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (empty or truncated)") from None
    except RuntimeError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def model_from_checkpoint(path, device="cpu") -> nn.Module:
    """The trained model of an epoch checkpoint (``last.pt``), rebuilt from the architecture
    the checkpoint records (registry name, options, classes, input shape) with its weights, in
    eval mode, on ``device``. Used for teachers (FERD) and ``train.init_from``-like reuse."""
    state = load_checkpoint(path)
    spec = checkpoint_model_spec(state)
    model = build_model(spec["name"], num_classes=spec["num_classes"], in_shape=spec["in_shape"], **spec["options"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


__all__ = ["MODELS", "MODEL_DATA_ARGS", "Normalize", "UnsafeCheckpointError", "build_model", "checkpoint_model_spec",
           "load_checkpoint", "model_from_checkpoint", "unwrap_model"]

lazy_package(__name__, {"Normalize": "._base:Normalize", "unwrap_model": "._base:unwrap_model",
                        **{target.split(":")[1]: target for target in MODELS._targets.values()}})
