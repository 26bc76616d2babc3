"""M5 and M5-Tricks (speech paper §4.2): logits (B, K) for (B, 1, T) waveforms, the
torchaudio tutorial's layout and parameter count, no BatchNorm and SiLU in M5-Tricks, the
minimum input length, normalisation inside, ``feature_layer``, gradients to the input."""
import pytest
import torch
from torch import nn

from distfair.models import MODELS, Normalize, build_model
from distfair.models.m5 import M5, M5Tricks, min_samples, trunk_length

T = 8000          # 0.5 s at 16 kHz: fast, and above the 6,848-sample minimum at stride 16
B = 3
NAMES = ["m5", "m5_tricks"]


def make(name, k=10, length=T, **options):
    torch.manual_seed(0)
    return build_model(name, num_classes=k, in_shape=(1, length), **options)


def waveforms(n=B, length=T):
    return torch.rand(n, 1, length) * 2 - 1


def test_registry():
    assert MODELS["m5"] is M5 and MODELS["m5_tricks"] is M5Tricks


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k,length", [(10, T), (13, 16000), (2, 6848)])
def test_logits_shape(name, k, length):
    model = make(name, k, length)
    for mode in (model.train, model.eval):
        mode()
        out = model(waveforms(length=length))
        assert out.shape == (B, k) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_parameter_count_matches_the_torchaudio_tutorial():
    """The tutorial's M5 (n_channel 32, stride 16) on 35 speech commands has 26,915 parameters."""
    assert sum(p.numel() for p in make("m5", 35).parameters()) == 26_915
    counts = {name: sum(p.numel() for p in make(name, 10, 16000).parameters()) for name in NAMES}
    assert counts == {"m5": 25_290, "m5_tricks": 24_906}       # Tricks: minus 2 * (32 + 32 + 64 + 64) BN parameters


def test_tricks_has_no_batchnorm_and_silu():
    m5, tricks = make("m5"), make("m5_tricks")
    assert sum(isinstance(m, nn.BatchNorm1d) for m in m5.modules()) == 4
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tricks.modules())
    assert sum(isinstance(m, nn.ReLU) for m in m5.modules()) == 4
    assert not any(isinstance(m, nn.SiLU) for m in m5.modules())
    assert sum(isinstance(m, nn.SiLU) for m in tricks.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in tricks.modules())
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in tricks.modules()
             if isinstance(c, nn.Conv1d)]
    assert convs == [(1, 32, 80, 16), (32, 32, 3, 1), (32, 64, 3, 1), (64, 64, 3, 1)]


def test_tricks_is_deterministic_in_train_mode():
    """No BatchNorm: train and eval mode compute the same function, batch statistics play no part."""
    model, x = make("m5_tricks"), waveforms()
    torch.testing.assert_close(model.train()(x), model.eval()(x))
    torch.testing.assert_close(model(x[:1]), model(x)[:1])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_input(name):
    model = make(name).eval()
    x = waveforms().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).logsumexp(dim=1).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()          # every sample gets a gradient


@pytest.mark.parametrize("name", NAMES)
def test_normalisation_inside_identity_by_default(name):
    model = make(name).eval()
    (norm,) = [m for m in model.modules() if isinstance(m, Normalize)]
    assert norm.mean.flatten().tolist() == [0.0] and norm.std.flatten().tolist() == [1.0]
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv1d))
    first_conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = waveforms()
    model(x)
    torch.testing.assert_close(seen[0], x)
    scaled = make(name, mean=0.1, std=0.5).eval()
    first = next(m for m in scaled.modules() if isinstance(m, nn.Conv1d))
    first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    scaled(x)
    torch.testing.assert_close(seen[1], (x - 0.1) / 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_feature_layer(name):
    model = make(name, length=16000).eval()
    assert model.feature_layer == "features"
    seen = []
    dict(model.named_modules())[model.feature_layer].register_forward_hook(lambda m, i, o: seen.append(o))
    model(waveforms(length=16000))
    assert seen[0].shape == (B, 64, trunk_length(16000, 16)) == (B, 64, 3)


@pytest.mark.parametrize("stride", [1, 4, 16, 32])
def test_minimum_length(stride):
    shortest = min_samples(stride)
    assert trunk_length(shortest, stride) == 1 and trunk_length(shortest - 1, stride) == 0
    model = make("m5", length=shortest, stride=stride).eval()
    assert model(torch.zeros(1, 1, shortest)).shape == (1, 10)
    with pytest.raises(ValueError, match=rf"m5 expects waveforms of shape \(1, T\) with T >= {shortest}"):
        make("m5", length=shortest - 1, stride=stride)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(16000,), (2, 16000), (1, 40), (1, 8, 8), (1, 16000, 1)])
def test_bad_in_shape(name, shape):
    with pytest.raises(ValueError, match=f"{name} expects waveforms of shape"):
        build_model(name, num_classes=10, in_shape=shape)


@pytest.mark.parametrize("options,match", [({"width": 0}, "width must be >= 1"), ({"stride": 0}, "stride must be >= 1"),
                                           ({"std": 0.0}, "std must be > 0")])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        make("m5_tricks", **options)


def test_width_scales_channels():
    model = make("m5", width=8)
    assert [c.out_channels for c in model.modules() if isinstance(c, nn.Conv1d)] == [8, 8, 16, 16]
    assert model.head.in_features == 16
