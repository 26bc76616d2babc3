"""Spoken words synthesised offline with eSpeak NG over a grid of voices (speech paper §4.1's
task, digits by default, with speaker-like subgroups that need no download).

**These are synthetic voices, not people.** The subgroups are engine settings standing in
for the paper's self-identified speaker attributes; results on them say how a model treats
eSpeak NG's voice variants, accents and speaking rates, not how it treats any human group.

The grid (methods.md "Speech equality study"): a *voice* is one combination of

- ``accent``: an eSpeak NG language voice (``en`` British, ``en-us``, ``en-gb-scotland``,
  ``en-gb-x-rp``, ``en-029`` Caribbean, ...), attribute ``accent``;
- ``variant``: a voice variant ``m1``..``m8`` / ``f1``..``f5``, spoken as ``<accent>+<variant>``
  (e.g. ``en-029+f3``): the gender-like attribute ``gender`` (``female`` for f*, ``male`` for m*);
- ``speed`` in words per minute: the age-like attribute ``age``, bucketed ``slow`` (< 160),
  ``medium`` (160-199) and ``fast`` (>= 200);
- ``pitch`` (eSpeak's 0-99 pitch parameter).

Every voice speaks every word ``repeats`` times (default once), so the set has ``len(words) *
repeats * voices`` clips, ordered voice by voice (then utterance, then word). By default the
repeats are refused (they would be identical copies) and each clip is exactly the voice's
setting; ``pitch_jitter``, ``rate_jitter`` and ``gain_jitter_db`` give each utterance its own
seeded pitch, rate and gain (``jitter_seed``; :class:`distfair.data._voices.Jitter`).
Per-sample attributes (``gender``, ``accent``, ``age``, ``voice``, ``variant``, ``speed``,
``pitch``: the voice's nominal settings, and ``utterance``: 0 .. repeats - 1) are in
``DataBundle.test_attributes`` / ``val_attributes`` / ``train_attributes`` (and ``<split>.attributes`` for every
split, train included), so ``eval.subgroups: {gender: metadata}`` works as for any
per-sample metadata.

**Split by held-out voice**: no voice has clips in two splits (its repeats included). Voices
are stratified by ``stratify`` (default (gender, accent); ``age`` may be added) and split with
``stratified_split`` (``test_fraction``, ``val_fraction`` of the voices of each stratum, seeded
by ``split_seed``), so with the defaults every split holds every gender x accent combination.
``split_seed: per_seed`` draws the split from each training seed instead
(:func:`distfair.data.build_dataset`'s ``run_seed``), so a seed spread includes which voices
were held out; validation voices are still carved from the voices that are not test voices.

**Waveforms, determinism and the cache**: :mod:`distfair.data._spoken_cache`; **engine** (the
pinned ``espeakng-loader`` wheel, or ``espeak_library`` / ``espeak_data``): :mod:`distfair.data._espeak`.
What each attribute is and is not: ``docs/datasets/spoken_words.md``.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from distfair.data._audio import BOUNDS, SAMPLE_RATE, Waveforms, check_length, select
from distfair.data import PER_SEED
from distfair.data._base import DataBundle, check_fraction, stratified_split
# the grid, the engine and the cache, re-exported: imported from here (DATASET_NOTICES, tests, native checks)
from distfair.data._espeak import DATA_ENV, INSTALL_HINT, LIBRARY_ENV, Engine, EngineMissing  # noqa: F401
from distfair.data._spoken_cache import FORMAT_VERSION, _waveforms, cache_key, default_root  # noqa: F401
from distfair.data._voices import (DEFAULT_ACCENTS, DEFAULT_PITCHES, DEFAULT_SPEEDS, DEFAULT_VARIANTS,  # noqa: F401
                                   ESPEAK_VARIANTS, NOTICE, Jitter, Voice, _strings, check_stratify, voice_grid)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ----------------------------------------------------------------------------- the split
def _stratum(voice: Voice, stratify: list[str]) -> tuple[str, ...]:
    return tuple(getattr(voice, name) for name in stratify)


def split_voices(voices: list[Voice], stratify: list[str], test_fraction: float, val_fraction: float,
                 split_seed: int) -> dict[str, np.ndarray]:
    """{"test", "val", "train"}: indices into ``voices``, stratified by the ``stratify``
    attributes (``stratified_split``: per stratum, ``round(test_fraction * n)`` test voices,
    then validation voices up to ``round((test_fraction + val_fraction) * n)``, the rest train)."""
    strata = {s: i for i, s in enumerate(dict.fromkeys(_stratum(v, stratify) for v in voices))}
    return dict(zip(("test", "val", "train"), stratified_split(
        [strata[_stratum(v, stratify)] for v in voices], [test_fraction, val_fraction], split_seed)))


# ----------------------------------------------------------------------------- the data set
def spoken_words(*, words: tuple[str, ...] = DIGIT_WORDS, accents: tuple[str, ...] = DEFAULT_ACCENTS,
                 variants: tuple[str, ...] = DEFAULT_VARIANTS, speeds: tuple[int, ...] = DEFAULT_SPEEDS,
                 pitches: tuple[int, ...] = DEFAULT_PITCHES, length: int = SAMPLE_RATE,
                 repeats: int = 1, pitch_jitter: int = 0, rate_jitter: int = 0, gain_jitter_db: float = 0.0,
                 jitter_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 stratify: tuple[str, ...] = ("gender", "accent"), split_seed: int | str = 0,
                 root: str | None = None, espeak_library: str | None = None,
                 espeak_data: str | None = None) -> DataBundle:
    """Synthetic spoken ``words`` (the classes, in this order) by every voice of the grid
    ``accents x variants x speeds x pitches``, split by held-out voice (module docstring).

    Defaults: the ten digits, 5 accents x 4 variants (m1, m3, f1, f3) x 3 speeds (140, 180,
    220 wpm) x pitch 50 = 60 voices, 600 one-second clips (generated in a few seconds on
    first use); ``test_fraction`` / ``val_fraction`` of the voices of each (gender, accent)
    stratum: 10 test, 10 validation and 40 training voices. ``repeats`` utterances per
    (voice, word) with per-utterance ``pitch_jitter`` (± pitch steps), ``rate_jitter`` (± words
    per minute, within the voice's age bucket) and ``gain_jitter_db`` (± dB), drawn from
    ``jitter_seed``: all off by default (the clips are those of the grid as before).
    ``stratify``: the voice attributes the split keeps balanced (any of gender, accent, age).
    ``split_seed``: an integer, or ``"per_seed"`` (resolved by :func:`distfair.data.build_dataset`
    from the training seed). ``root``: the cache folder (default
    ``~/.cache/distfair/spoken_words``). ``espeak_library`` / ``espeak_data``: another eSpeak NG
    build than the pinned wheel's.
    """
    words = [w.lower() for w in _strings("words", words)]
    voices = voice_grid(accents, variants, speeds, pitches)
    check_length(length)
    jitter = Jitter(repeats, pitch_jitter, rate_jitter, gain_jitter_db, jitter_seed)
    jitter.check(voices)
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    stratify = check_stratify(stratify)
    if split_seed == PER_SEED:
        raise ValueError(f"split_seed {PER_SEED!r} takes the training seed: build the data set with "
                         f"distfair.data.build_dataset(..., run_seed=<seed>)")
    if not isinstance(split_seed, int) or isinstance(split_seed, bool) or split_seed < 0:
        raise ValueError(f"split_seed must be a non-negative integer or {PER_SEED!r} (each training seed draws "
                         f"its own voice split), got {split_seed!r}")
    engine_options = (espeak_library, espeak_data)
    with contextlib.suppress(EngineMissing):     # a missing engine matters only if the grid is not cached
        known = Engine.locate(*engine_options).variants()
        missing = [v for v in dict.fromkeys(v.variant for v in voices) if v not in known]
        if missing:
            raise ValueError(f"variants {missing} are not eSpeak NG variants; this engine has {known}")
    root = os.path.abspath(os.path.expanduser(root)) if root else default_root()

    split = split_voices(voices, stratify, test_fraction, val_fraction, split_seed)
    for name, chosen in split.items():
        if len(chosen) == 0:
            raise ValueError(f"spoken_words: the {name} split has no voice ({len(voices)} voices in "
                             f"{len({_stratum(v, stratify) for v in voices})} ({', '.join(stratify)}) strata, "
                             f"test_fraction={test_fraction}, val_fraction={val_fraction}): add voices (variants, "
                             f"speeds, pitches) or raise the fraction")

    waves = torch.from_numpy(_waveforms(engine_options, words, voices, length, root, jitter)).unsqueeze(1)
    per_voice = jitter.repeats * len(words)
    voice_of_clip = np.repeat(np.arange(len(voices)), per_voice)
    targets = np.tile(np.arange(len(words)), len(voices) * jitter.repeats)
    utterance = np.tile(np.repeat(np.arange(jitter.repeats), len(words)), len(voices))
    attributes = {name: [voices[v].attributes()[name] for v in voice_of_clip] for name in voices[0].attributes()}
    attributes["utterance"] = [str(u) for u in utterance]
    parts = {}
    for name, chosen in split.items():
        idx = np.flatnonzero(np.isin(voice_of_clip, chosen))
        parts[name] = Waveforms(waves[idx], targets[idx].tolist(), select(attributes, idx))
    return DataBundle(parts["train"], parts["val"], parts["test"], num_classes=len(words),
                      in_shape=(1, length), bounds=BOUNDS, class_names=words,
                      test_attributes=dict(parts["test"].attributes), val_attributes=dict(parts["val"].attributes),
                      train_attributes=dict(parts["train"].attributes))
