"""The waveforms of a ``spoken_words`` grid: synthesised clip by clip, resampled, and cached.

**Waveforms**: the engine's 16-bit output (22,050 Hz) / 32768, resampled to 16 kHz with
``torchaudio.functional.resample``, zero-padded or cropped at the end to ``length`` samples
(default 16,000 = 1 s: every default clip fits; a longer one would lose its end), values in
[-1, 1]. The engine's own level is kept (no loudness normalisation).

**Determinism and the cache**: the clips are generated on first use and cached under
``root`` (default ``$XDG_CACHE_HOME/distfair/spoken_words``, i.e. ``~/.cache/distfair/
spoken_words``), in one folder per grid (``waveforms.npy`` plus ``manifest.json``, written
last, with the engine version and a SHA-256 of the array); a later build with the same grid
reads that folder and never calls the engine. eSpeak NG keeps state between utterances
(a pitch-flutter phase in a function-static variable, and a noise generator seeded from the
clock), so each clip is synthesised by a freshly loaded copy of the library (``dlopen``,
synthesise, ``dlclose``) with ``espeak_ng_SetRandSeed(0)``: a clip's bytes depend only on
(engine build, voice, word, and the utterance's jitter draw), not on what was synthesised before. Generation checks this (the
first clip is synthesised twice) and checks that no two voices give identical audio (as
``en-gb+f3`` would: ``en-gb`` is not a voice file name, so eSpeak ignores it, variant and all).
With the pinned engine, two builds give the same bytes; another engine build gives other
(equally valid) audio, so delete the cache folder after changing the engine.

**Within-voice jitter** (:class:`distfair.data._voices.Jitter`, off by default): each
utterance is synthesised with its own drawn pitch and rate, and its samples are scaled by its
drawn gain before resampling (a boost can clip the loudest clips at the [-1, 1] clamp). The
draws are part of the options, so the clips stay a pure function of them; the cache key
holds the jitter options only when jitter or repeats are on, so a grid cached without them
keeps its folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Iterator

import numpy as np

from distfair.data._audio import SAMPLE_RATE, fix_length, to_16k
from distfair.data._espeak import Engine
from distfair.data._voices import NOTICE, Jitter, Voice

#: bump when the generated arrays would change for the same options
FORMAT_VERSION = 1


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def default_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distfair", "spoken_words")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock file, so concurrent builders (Ray workers) generate a grid once."""
    try:
        import fcntl
    except ImportError:            # not POSIX: no lock; the atomic renames still keep files whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_cached(folder: str, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("key") != key:
            return None
        waves = np.load(os.path.join(folder, "waveforms.npy"), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if waves.shape != shape or waves.dtype != np.float32:
        return None
    if hashlib.sha256(waves.tobytes()).hexdigest() != manifest.get("sha256"):
        return None
    return waves


def _generate(engine: Engine, words: list[str], voices: list[Voice], length: int,
              jitter: Jitter = Jitter()) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Synthesise every clip (voice by voice, then utterance by utterance, then word by word),
    then resample to 16 kHz and fix the length; also returns each clip's (pitch, speed, gain).

    Resampling runs on batches of clips padded or cropped to one input length: the first
    ``length`` output samples of a clip depend only on its first ``length * rate / 16000``
    input samples plus the sinc filter's reach (under 16 input samples at torchaudio's default
    width of 6 zero crossings), which the margin of 64 covers, and batching is ~50x faster
    than resampling clip by clip."""
    pcm_clips: list[np.ndarray] = []
    gains: list[float] = []
    spoken_as: list[tuple[int, int, float]] = []
    seen: dict[tuple[str, str], str] = {}        # (word, pcm digest) -> voice id
    rates = set()
    first = None
    for voice in voices:
        for utterance in range(jitter.repeats):
            for word in words:
                spoken, gain = jitter.draw(voice, word, utterance)
                first = first or (spoken, word)
                pcm, rate = engine.synthesize(spoken, word)
                rates.add(rate)
                digest = hashlib.sha256(pcm.tobytes()).hexdigest()
                twin = seen.setdefault((word, digest), voice.id)
                if twin != voice.id:
                    raise ValueError(f"spoken_words: voices {twin!r} and {voice.id!r} give identical audio for "
                                     f"{word!r}: eSpeak NG ignored a setting (an accent that is not a voice file "
                                     f"name drops its variant, e.g. 'en-gb+f3'; some accents say some words alike, "
                                     f"e.g. 'en-gb-x-gbclan' and 'en-029'), or rate/pitch jitter made two voices "
                                     f"meet; choose voices that differ")
                pcm_clips.append(pcm)
                gains.append(gain)
                spoken_as.append((spoken.pitch, spoken.speed, round(20 * np.log10(gain), 6)))
    again, _ = engine.synthesize(*first)
    if not np.array_equal(again, pcm_clips[0]):
        raise RuntimeError(f"spoken_words: eSpeak NG ({engine.library}) gave different audio for the same clip "
                           f"twice: its state was not reset between clips (the library could not be unloaded), "
                           f"so the data set would not be reproducible")
    (rate,) = rates
    span = -(-length * rate // SAMPLE_RATE) + 64
    waves = np.empty((len(pcm_clips), length), dtype=np.float32)
    for start in range(0, len(pcm_clips), 256):
        chunk = np.zeros((min(256, len(pcm_clips) - start), span), dtype=np.float32)
        for row, pcm in enumerate(pcm_clips[start:start + 256]):
            n = min(span, pcm.size)
            chunk[row, :n] = pcm[:n] / 32768.0
            if gains[start + row] != 1.0:
                chunk[row, :n] *= gains[start + row]
        waves[start:start + len(chunk)] = fix_length(to_16k(chunk, rate), length).numpy()
    return waves, spoken_as


def cache_key(words: list[str], voices: list[Voice], length: int, jitter: Jitter = Jitter()) -> str:
    """The grid's cache key (its folder is the first 20 hex digits)."""
    return _digest({"format": FORMAT_VERSION, "words": words, "voices": [v.id for v in voices],
                    "length": length, "sample_rate": SAMPLE_RATE, **jitter.key()})


def _waveforms(engine_options: tuple[str | None, str | None], words: list[str], voices: list[Voice],
               length: int, root: str, jitter: Jitter = Jitter()) -> np.ndarray:
    """The (clips, length) array of the grid: from the cache, else generated and cached."""
    key = cache_key(words, voices, length, jitter)
    folder = os.path.join(root, key[:20])
    shape = (len(voices) * jitter.repeats * len(words), length)
    waves = _load_cached(folder, key, shape)
    if waves is not None:
        return waves
    engine = Engine.locate(*engine_options)
    os.makedirs(folder, exist_ok=True)
    with _locked(os.path.join(folder, ".lock")):
        waves = _load_cached(folder, key, shape)       # another process may have made it meanwhile
        if waves is not None:
            return waves
        waves, spoken_as = _generate(engine, words, voices, length, jitter)
        tmp = os.path.join(folder, f"waveforms.{os.getpid()}.npy")
        np.save(tmp, waves)
        os.replace(tmp, os.path.join(folder, "waveforms.npy"))
        manifest = {"key": key, "format": FORMAT_VERSION, "sha256": hashlib.sha256(waves.tobytes()).hexdigest(),
                    "engine": {"version": engine.version(), "library": engine.library, "data": engine.data},
                    "sample_rate": SAMPLE_RATE, "length": length, "words": words,
                    "voices": [{"id": v.id, **v.attributes()} for v in voices],
                    "note": NOTICE}
        if jitter.key():
            manifest["jitter"] = jitter.key()["jitter"]
            manifest["clips_spoken_as"] = {"order": "voice, utterance, word", "fields": ["pitch", "speed", "gain_db"],
                                           "values": [list(c) for c in spoken_as]}
        tmp = os.path.join(folder, f"manifest.{os.getpid()}.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(folder, "manifest.json"))   # written last: marks the folder complete
    return waves
