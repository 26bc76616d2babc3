"""Models: every registry entry gives logits (B, K) for a matching input; normalisation lives
inside the model as buffers; ``unwrap_model``; bad shapes and options are ValueErrors."""
import inspect

import pytest
import torch
from torch import nn

from distfair.models import MODEL_DATA_ARGS, MODELS, Normalize, build_model, unwrap_model

NAMES = sorted(MODELS)
K = 5
B = 3
#: options keeping the tests fast (preact_resnet18 at width 8)
SMALL = {"preact_resnet18": {"width": 8}, "resnet18": {"width": 8}, "mobilenet_v2": {"width_mult": 0.25},
         "wide_resnet": {"depth": 10, "widen_factor": 1}}   # full sizes: tests/test_cifar_models.py
#: the input each known model is built for; a new model gets the first candidate it accepts
SHAPES = {"digits_cnn": (1, 8, 8), "cnn1d": (1, 40), "preact_resnet18": (3, 32, 32), "mlp": (8,),
          "vgg16": (3, 32, 32), "vit_b_16": (3, 32, 32),
          "m5": (1, 8000), "m5_tricks": (1, 8000)}   # 0.5 s at 16 kHz (M5 needs >= 6,848 samples)
CANDIDATE_SHAPES = [(1, 8, 8), (1, 40), (3, 32, 32), (8,), (1, 28, 28), (3, 64, 64), (1, 16000)]
#: models documented as taking flat features without a normalisation layer
NO_NORMALIZE: set[str] = set()   # every model normalises inside
#: inputs each model must reject
BAD_SHAPES = {
    "digits_cnn": [(1, 28, 28), (3, 8, 8), (64,)],
    "cnn1d": [(40,), (2, 40), (1, 8, 8)],
    "preact_resnet18": [(1, 32, 32), (3, 32), (32, 32, 3)],
    "vgg16": [(1, 32, 32), (3, 16, 16)],
    "vit_b_16": [(3, 24, 24), (3, 32, 48)],
}


def shape_for(name: str) -> tuple:
    if name in SHAPES:
        return SHAPES[name]
    for shape in CANDIDATE_SHAPES:
        try:
            MODELS[name](num_classes=K, in_shape=shape, **SMALL.get(name, {}))
        except ValueError:
            continue
        return shape
    pytest.fail(f"model {name!r} accepts none of {CANDIDATE_SHAPES}: add its input shape to SHAPES")


def make(name: str, k: int = K) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    shape = shape_for(name)
    return build_model(name, num_classes=k, in_shape=shape, **SMALL.get(name, {})), shape


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_registry_signature(name):
    params = inspect.signature(MODELS[name]).parameters
    for arg in MODEL_DATA_ARGS:
        assert arg in params and params[arg].kind is params[arg].KEYWORD_ONLY
    for pname, p in params.items():
        assert p.kind is p.KEYWORD_ONLY, pname
        if pname not in MODEL_DATA_ARGS:  # user options: annotated, defaulted (read by the config)
            assert p.annotation is not p.empty and p.default is not p.empty, pname


@pytest.mark.parametrize("k", [2, K])
def test_logits_shape(name, k):
    model, shape = make(name, k)
    for mode in (model.train, model.eval):
        mode()
        out = model(torch.rand(B, *shape))
        assert out.shape == (B, k) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_gradients_flow_to_input(name):
    model, shape = make(name)
    x = torch.rand(B, *shape, requires_grad=True)
    (grad,) = torch.autograd.grad(model.eval()(x).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_every_model_but_documented_exceptions_normalises_inside(name):
    model, _ = make(name)
    count = sum(isinstance(m, Normalize) for m in model.modules())
    assert count == (0 if name in NO_NORMALIZE else 1)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NO_NORMALIZE])
def test_normalize_buffers_in_state_dict_and_used(name):
    model, shape = make(name)
    (prefix, norm), = [(p, m) for p, m in model.named_modules() if isinstance(m, Normalize)]
    state = model.state_dict()
    for buf in ("mean", "std"):
        assert f"{prefix}.{buf}" in state
        assert f"{prefix}.{buf}" in dict(model.named_buffers())
    assert not any(p is norm.mean or p is norm.std for p in model.parameters())  # not trained
    # the forward pass uses them: changing the mean changes the logits
    x = torch.rand(B, *shape)
    model.eval()
    before = model(x)
    with torch.no_grad():
        norm.mean += 0.5
    assert not torch.allclose(before, model(x))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NO_NORMALIZE])
def test_normalize_buffers_move_with_model(name):
    model, shape = make(name)
    norm = next(m for m in model.modules() if isinstance(m, Normalize))
    model.to(torch.float64)
    assert norm.mean.dtype == torch.float64 and norm.std.dtype == torch.float64
    out = model.eval()(torch.rand(B, *shape, dtype=torch.float64))
    assert out.dtype == torch.float64
    device = "cuda" if torch.cuda.is_available() else "meta"
    model.to(device)
    assert norm.mean.device.type == device and norm.std.device.type == device
    if device == "cuda":
        assert model(torch.rand(B, *shape, dtype=torch.float64, device=device)).shape == (B, K)


def test_normalize_by_hand():
    norm = Normalize([0.5, 0.25], [2.0, 0.5], channel_dims=2)
    x = torch.ones(1, 2, 2, 2)
    expected = torch.stack([torch.full((2, 2), 0.25), torch.full((2, 2), 1.5)]).unsqueeze(0)
    torch.testing.assert_close(norm(x), expected)
    assert norm.mean.shape == (1, 2, 1, 1)


@pytest.mark.parametrize("mean,std,match", [([0.0], [1.0, 1.0], "same length"), ([0.0], [0.0], "std")])
def test_normalize_rejects_bad_stats(mean, std, match):
    with pytest.raises(ValueError, match=match):
        Normalize(mean, std, channel_dims=1)


def test_unwrap_model():
    inner = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(Wrapper(inner)) is inner
    assert unwrap_model(nn.DataParallel(inner)) is inner
    assert unwrap_model(inner) is inner


@pytest.mark.parametrize("name,shape", [(n, s) for n, shapes in sorted(BAD_SHAPES.items()) for s in shapes])
def test_bad_in_shape_raises(name, shape):
    with pytest.raises(ValueError, match="shape"):
        build_model(name, num_classes=K, in_shape=shape, **SMALL.get(name, {}))


@pytest.mark.parametrize("name,options,match", [
    ("digits_cnn", {"width": 0}, "width"), ("preact_resnet18", {"width": 0}, "width"),
    ("cnn1d", {"channels": 0}, "channels"), ("mlp", {"hidden": 0}, "hidden"),
])
def test_bad_options_raise(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, num_classes=K, in_shape=SHAPES[name], **options)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", num_classes=K, in_shape=(8,))
