"""What the speech datasets share: reading audio files, resampling to 16 kHz, fixing the
length, and the two waveform datasets (in memory, and read from disk on access).

Conventions (methods.md "Conventions"): a waveform is float32 in [-1, 1], mono, at
``SAMPLE_RATE`` = 16 kHz, shaped (1, T) per sample with one fixed T per dataset.

- **Reading**: ``soundfile`` (libsndfile, bundled in its wheel) for every format: PCM/float
  WAV, FLAC, and the MP3 clips Common Voice ships. Integer PCM is scaled by its full range
  (int16 / 32768), so values lie in [-1, 1); several channels are averaged to mono.
- **Resampling**: ``torchaudio.functional.resample`` (band-limited sinc interpolation, its
  defaults), applied only when the file's rate is not 16 kHz; the result is clamped to
  [-1, 1] (the sinc filter can overshoot a full-scale input slightly).
- **Length**: zero-padded at the end, or cropped at the end (the first T samples are kept),
  to exactly T samples (``fix_length``).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SAMPLE_RATE = 16_000
BOUNDS = (-1.0, 1.0)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of an audio file, via soundfile."""
    import soundfile

    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:     # soundfile.LibsndfileError is a RuntimeError
        raise OSError(f"cannot read audio file {path!r}: {err}") from err
    return samples.mean(axis=1, dtype=np.float32), int(rate)


def to_16k(samples: np.ndarray | torch.Tensor, rate: int) -> torch.Tensor:
    """1-D float32 tensor at ``SAMPLE_RATE``, clamped to [-1, 1]."""
    wave = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if rate != SAMPLE_RATE:
        import torchaudio.functional

        wave = torchaudio.functional.resample(wave, orig_freq=int(rate), new_freq=SAMPLE_RATE)
    return wave.clamp_(*BOUNDS)


def fix_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """The last dimension zero-padded or cropped at the end to exactly ``length`` samples."""
    n = wave.shape[-1]
    if n >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - n))


def load_clip(path: str, length: int) -> torch.Tensor:
    """An audio file as a (1, length) float32 waveform at 16 kHz in [-1, 1]."""
    samples, rate = read_audio(path)
    return fix_length(to_16k(samples, rate), length).unsqueeze(0).contiguous()


#: the longest clip (samples at 16 kHz): ten minutes
MAX_LENGTH = 600 * SAMPLE_RATE


def check_length(length: int) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive number of samples at 16 kHz, got {length!r}")
    if length > MAX_LENGTH:
        raise ValueError(f"length must be <= {MAX_LENGTH} samples (ten minutes at 16 kHz), got {length}")


class Waveforms(Dataset):
    """Waveforms held in memory: ``waveforms`` (N, 1, T) float32, ``targets`` (N,) ints,
    ``attributes`` {name: one string per sample} (every split, train included)."""

    def __init__(self, waveforms: torch.Tensor, targets: Sequence[int], attributes: dict[str, list[str]]):
        self.waveforms = waveforms
        self.targets = [int(t) for t in targets]
        self.attributes = {k: list(v) for k, v in attributes.items()}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.waveforms[index], self.targets[index]


class AudioClips(Dataset):
    """Audio files read, resampled and length-fixed on access (``load_clip``): memory does not
    grow with the set. ``paths`` / ``targets`` / ``attributes`` (one string per sample)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], attributes: dict[str, list[str]],
                 length: int):
        self.paths = [os.fspath(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.attributes = {k: list(v) for k, v in attributes.items()}
        self.length = length

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_clip(self.paths[index], self.length), self.targets[index]


def select(attributes: dict[str, list[str]], idx) -> dict[str, list[str]]:
    """The per-sample attribute lists restricted to (and ordered by) ``idx``."""
    return {name: [values[i] for i in idx] for name, values in attributes.items()}
