"""The CIFAR models of FERD (paper 002, "Experimental Settings"): ResNet-18 and MobileNetV2
students, the WRN-34-10 teacher. Output shapes, input and option validation, parameter
counts against the published sizes, normalisation inside, gradients to the input, and the
``feature_layer`` every convolutional model in the registry names (FERD Eq. 4 hooks it).

Fast: WRN-34-10 is built once (batch 2); parameter counts and the registry-wide
``feature_layer`` check run on the meta device (shapes only, no memory, no arithmetic).
"""
import pytest
import torch
from torch import nn

from distfair.models import MODELS, Normalize, build_model
from distfair.models.mobilenet_v2_cifar import MobileNetV2
from distfair.models.preact_resnet import CIFAR_MEAN, CIFAR_STD
from distfair.models.resnet_cifar import ResNet18
from distfair.models.wide_resnet import WideResNet

CIFAR = (3, 32, 32)
B = 2
NEW = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2, "wide_resnet": WideResNet}
#: small options for the forward tests (the full-size models are counted on the meta device)
SMALL = {"resnet18": {"width": 8}, "mobilenet_v2": {"width_mult": 0.25},
         "wide_resnet": {"depth": 10, "widen_factor": 1}, "preact_resnet18": {"width": 8}}
#: exact parameter counts of our implementations (K=10) and the published sizes they match
PARAMS_K10 = {"resnet18": 11_173_962, "mobilenet_v2": 2_236_682, "wide_resnet": 46_160_474}
PUBLISHED_K10 = {"resnet18": 11.17e6, "mobilenet_v2": 2.24e6, "wide_resnet": 46.16e6}
#: input shapes of the registry's other models; a new model gets the first candidate it accepts
SHAPES = {"digits_cnn": (1, 8, 8), "cnn1d": (1, 40), "mlp": (8,)}
CANDIDATE_SHAPES = [CIFAR, (1, 8, 8), (1, 40), (8,), (1, 28, 28), (3, 64, 64), (1, 16000)]
#: models with convolutions but no convolutional feature stage, and why
NO_FEATURE_LAYER = {"vit_b_16": "its only convolution is the patch embedding; the features are tokens"}


@pytest.fixture(scope="module")
def wrn34_10() -> nn.Module:
    """The default WRN-34-10 (46M parameters), built once for the module, in eval mode."""
    torch.manual_seed(0)
    return build_model("wide_resnet", num_classes=10, in_shape=CIFAR).eval()


def _on_meta(name: str, k: int = 10, shape: tuple = CIFAR, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes=k, in_shape=shape, **options)


def _shape_for(name: str) -> tuple:
    if name in SHAPES:
        return SHAPES[name]
    for shape in CANDIDATE_SHAPES:
        try:
            _on_meta(name, shape=shape)
        except ValueError:
            continue
        return shape
    pytest.fail(f"model {name!r} accepts none of {CANDIDATE_SHAPES}: add its input shape to SHAPES")


def _features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, output of ``model.feature_layer``) for one forward pass, via a forward hook."""
    seen = []
    layer = dict(model.named_modules())[model.feature_layer]
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        logits = model(x)
    finally:
        handle.remove()
    assert len(seen) == 1, f"{model.feature_layer} ran {len(seen)} times in one forward pass"
    return logits, seen[0]


# --- output shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("name", sorted(NEW))
def test_logits_shape_small(name, k):
    torch.manual_seed(0)
    model = build_model(name, num_classes=k, in_shape=CIFAR, **SMALL[name])
    for mode in (model.train, model.eval):
        mode()
        out = model(torch.rand(B, *CIFAR))
        assert out.shape == (B, k) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_logits_shape_full_size(name, k):
    torch.manual_seed(0)
    model = build_model(name, num_classes=k, in_shape=CIFAR).eval()
    with torch.no_grad():
        out = model(torch.rand(B, *CIFAR))
    assert out.shape == (B, k) and torch.isfinite(out).all()


@pytest.mark.parametrize("k", [10, 100])
def test_wrn34_10_logits_shape(k):
    assert _on_meta("wide_resnet", k)(torch.empty(B, *CIFAR, device="meta")).shape == (B, k)


def test_wrn34_10_forward_and_gradients(wrn34_10):
    x = torch.rand(B, *CIFAR, requires_grad=True)
    logits, feats = _features(wrn34_10, x)
    assert logits.shape == (B, 10) and torch.isfinite(logits).all()
    assert feats.shape == (B, 640, 8, 8)  # 64 * widen_factor channels at 32 / 4
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- parameter counts ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NEW))
def test_parameter_counts_match_published(name):
    count = sum(p.numel() for p in _on_meta(name, 10).parameters())
    assert count == PARAMS_K10[name]
    assert abs(count - PUBLISHED_K10[name]) / PUBLISHED_K10[name] < 0.01
    # K=100 adds (K - 10) rows to the linear head: weights and biases
    head_in = {"resnet18": 512, "mobilenet_v2": 1280, "wide_resnet": 640}[name]
    assert sum(p.numel() for p in _on_meta(name, 100).parameters()) == count + 90 * (head_in + 1)


def test_parameter_counts_scale_with_options():
    def count(name, **options):
        return sum(p.numel() for p in _on_meta(name, **options).parameters())

    assert count("resnet18", width=32) < count("resnet18") / 3.5  # convs scale with width^2
    assert count("mobilenet_v2", width_mult=0.5) < count("mobilenet_v2")
    assert count("wide_resnet", depth=28) < count("wide_resnet")  # WRN-28-10: 36.5M
    assert abs(count("wide_resnet", depth=28) - 36.48e6) / 36.48e6 < 0.01


def test_reference_state_dict_names():
    """Parameter names of the reference code (RSLAD's ResNet-18, TRADES' WRN) for loading."""
    resnet = set(_on_meta("resnet18").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.shortcut.0.weight", "layer4.1.bn2.weight",
            "linear.weight"} <= resnet
    wrn = set(_on_meta("wide_resnet").state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.4.conv2.weight",
            "bn1.weight", "fc.bias"} <= wrn
    assert not any(k.startswith("sub_block1") for k in wrn)


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32), (32, 32, 3), (3 * 32 * 32,)])
def test_bad_in_shape_raises(name, shape):
    with pytest.raises(ValueError, match=rf"{name} expects inputs of shape \(3, H, W\)"):
        build_model(name, num_classes=10, in_shape=shape)


@pytest.mark.parametrize("name,options,match", [
    ("resnet18", {"width": 0}, "width must be >= 1, got 0"),
    ("mobilenet_v2", {"width_mult": 0.0}, "width_mult must be > 0, got 0.0"),
    ("mobilenet_v2", {"width_mult": -1.0}, "width_mult must be > 0"),
    ("wide_resnet", {"depth": 33}, "depth must be 6n \\+ 4 .* got 33"),
    ("wide_resnet", {"depth": 4}, "depth must be 6n \\+ 4 .* got 4"),
    ("wide_resnet", {"widen_factor": 0}, "widen_factor must be >= 1, got 0"),
    ("wide_resnet", {"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
    ("wide_resnet", {"dropout": -0.1}, "dropout"),
])
def test_bad_options_raise(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, num_classes=10, in_shape=CIFAR, **options)


@pytest.mark.parametrize("name", sorted(NEW))
def test_bad_num_classes_raises(name):
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_model(name, num_classes=0, in_shape=CIFAR)


def test_wrn_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("wide_resnet", num_classes=10, in_shape=CIFAR, depth=10, widen_factor=1, dropout=0.5)
    x = torch.rand(B, *CIFAR)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


# --- normalisation inside, gradients ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NEW))
def test_cifar_normalisation_inside(name):
    model = build_model(name, num_classes=10, in_shape=CIFAR, **SMALL[name]).eval()
    (norm,) = [m for m in model.modules() if isinstance(m, Normalize)]
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor(CIFAR_MEAN))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor(CIFAR_STD))
    # the first convolution sees (x - mean) / std: zeros for the mean image, ones for mean + std
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    first_conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    model(mean.expand(B, *CIFAR))
    model(mean + std.expand(B, *CIFAR))
    torch.testing.assert_close(seen[0], torch.zeros(B, *CIFAR), atol=1e-6, rtol=0)
    torch.testing.assert_close(seen[1], torch.ones(B, *CIFAR))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_gradients_flow_to_input(name):
    model = build_model(name, num_classes=10, in_shape=CIFAR, **SMALL[name]).eval()
    x = torch.rand(B, *CIFAR, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- feature_layer (FERD Eq. 4) -----------------------------------------------------------

def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_conv_model_names_its_feature_layer(name):
    """Every registered model with convolutions names a module of ``named_modules()`` whose
    output is (B, C, ...), channels in dim 1, and 4-D for images (shapes on the meta device)."""
    shape = _shape_for(name)
    model = _on_meta(name, shape=shape).eval()
    if not _has_conv(model) or name in NO_FEATURE_LAYER:
        return
    assert isinstance(getattr(model, "feature_layer", None), str), f"{name} has no feature_layer"
    assert model.feature_layer in dict(model.named_modules()), model.feature_layer
    _, feats = _features(model, torch.empty(B, *shape, device="meta"))
    assert feats.dim() == len(shape) + 1 and feats.shape[0] == B
    assert feats.dim() >= 3  # (B, C, L) or (B, C, H, W)


@pytest.mark.parametrize("name,channels,side", [("resnet18", 64, 4), ("mobilenet_v2", 1280, 4),
                                                ("preact_resnet18", 64, 4)])
def test_feature_layer_output_real_forward(name, channels, side):
    model = build_model(name, num_classes=10, in_shape=CIFAR, **SMALL[name]).eval()
    logits, feats = _features(model, torch.rand(B, *CIFAR))
    assert logits.shape == (B, 10) and feats.shape == (B, channels, side, side)
    assert torch.isfinite(feats).all()


def test_feature_layer_names():
    expected = {"cnn1d": "features", "digits_cnn": "features", "mlp": None, "mobilenet_v2": "features",
                "preact_resnet18": "layers", "resnet18": "layer4", "vgg16": "net.features", "vit_b_16": None,
                "wide_resnet": "block3"}
    assert {n: getattr(MODELS[n], "feature_layer", None) for n in expected} == expected
