"""M5 and M5-Tricks: 1-D CNNs on raw 16 kHz waveforms (speech paper §4.2).

M5 is Dai et al. 2017 ("Very deep convolutional neural networks for raw waveforms",
ICASSP) in the shape of the torchaudio speech-command tutorial: a wide first convolution
(kernel 80, stride ``stride``) over the waveform, then three narrow ones (kernel 3), each
followed by BatchNorm, ReLU and max-pooling by 4; a global average over time and a linear
head. Channels ``width, width, 2*width, 2*width`` (the tutorial's ``n_channel`` = 32; Dai et
al.'s own M5 is wider: 128, 128, 256, 512 at stride 4).

M5-Tricks is the paper's bag-of-tricks variant (§4.2, after [43] and [24]): the same network
without BatchNorm and with SiLU in place of ReLU.

Contract (``distfair.models._base``, methods.md "Conventions"): input (B, 1, T) waveforms in
[-1, 1]; output logits (B, K), not the tutorial's log-softmax of shape (B, 1, K).
Normalisation inside: ``(x - mean) / std`` with ``mean``/``std`` as buffers, the identity by
default (mean 0, std 1), since waveforms are already centred in [-1, 1]; attacks and noise
act on the waveform before it. T must leave at least one step after the four pooling
stages: T >= 80 + 423 * stride (6,848 samples at stride 16).

``feature_layer`` = ``"features"``: the convolutional trunk, output (B, 2*width, T') after
its last pooling (the last convolutional stage, for hooks such as FERD's Eq. 4).
"""
from __future__ import annotations

import torch
from torch import nn

from distfair.models._base import Normalize

FIRST_KERNEL = 80
POOL = 4


def _blocks(width: int, stride: int, batch_norm: bool, activation: type[nn.Module]) -> nn.Sequential:
    def block(c_in: int, c_out: int, kernel: int, step: int) -> nn.Sequential:
        layers = [nn.Conv1d(c_in, c_out, kernel_size=kernel, stride=step)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(c_out))
        layers += [activation(), nn.MaxPool1d(POOL)]
        return nn.Sequential(*layers)

    return nn.Sequential(block(1, width, FIRST_KERNEL, stride), block(width, width, 3, 1),
                         block(width, 2 * width, 3, 1), block(2 * width, 2 * width, 3, 1))


def trunk_length(samples: int, stride: int) -> int:
    """Time steps left after the trunk for an input of ``samples`` (0: too short)."""
    if samples < FIRST_KERNEL:
        return 0
    steps = ((samples - FIRST_KERNEL) // stride + 1) // POOL
    for _ in range(3):
        steps = max(steps - 2, 0) // POOL
    return steps


def min_samples(stride: int) -> int:
    """The shortest input the trunk accepts."""
    steps = 1
    for _ in range(3):
        steps = steps * POOL + 2
    return FIRST_KERNEL + (steps * POOL - 1) * stride


class M5(nn.Module):
    """M5 (Dai et al. 2017, torchaudio tutorial layout): see the module docstring.

    Options: ``width`` (channels of the first two stages; the last two have 2*width, default
    32), ``stride`` of the first convolution (default 16, i.e. 1 ms at 16 kHz), ``mean`` /
    ``std`` of the internal normalisation (default identity).
    """

    feature_layer = "features"
    registry_name = "m5"          # for error messages
    batch_norm = True
    activation: type[nn.Module] = nn.ReLU

    def __init__(self, *, num_classes: int, in_shape: tuple, width: int = 32, stride: int = 16,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__()
        name = type(self).registry_name
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if len(in_shape) != 2 or in_shape[0] != 1 or trunk_length(in_shape[1], stride) < 1:
            raise ValueError(f"{name} expects waveforms of shape (1, T) with T >= {min_samples(stride)} "
                             f"at stride {stride}, got {tuple(in_shape)}")
        self.normalize = Normalize([mean], [std], channel_dims=1)
        self.features = _blocks(width, stride, self.batch_norm, self.activation)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)).mean(dim=-1))


class M5Tricks(M5):
    """M5-Tricks (speech paper §4.2): M5 without BatchNorm, SiLU instead of ReLU; same options."""

    registry_name = "m5_tricks"
    batch_norm = False
    activation = nn.SiLU
