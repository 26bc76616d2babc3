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

Every voice speaks every word once, so the set has ``len(words) * voices`` clips, ordered
voice by voice. Per-sample attributes (``gender``, ``accent``, ``age``, ``voice``,
``variant``, ``speed``, ``pitch``) are in ``DataBundle.test_attributes`` / ``val_attributes``
(and ``<split>.attributes`` for every split, train included), so ``eval.subgroups:
{gender: metadata}`` works as for any per-sample metadata.

**Split by held-out voice**: no voice has clips in two splits. Voices are stratified by
(gender, accent) and split with ``stratified_split`` (``test_fraction``, ``val_fraction`` of
the voices of each stratum, seeded by ``split_seed``), so with the defaults every split
holds every gender x accent combination.

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
(engine build, voice, word), not on what was synthesised before. Generation checks this (the
first clip is synthesised twice) and checks that no two voices give identical audio (as
``en-gb+f3`` would: ``en-gb`` is not a voice file name, so eSpeak ignores it, variant and all).
With the pinned engine, two builds give the same bytes; another engine build gives other
(equally valid) audio, so delete the cache folder after changing the engine.

**Engine**: the ``espeakng-loader`` wheel (a project dependency) ships libespeak-ng 1.52 and
its voice data; the library is driven through ``ctypes`` (``espeak_Synth`` in synchronous
mode). ``espeak_library`` (or ``$DISTFAIR_ESPEAK_LIBRARY``) points at another
libespeak-ng >= 1.52 shared library, with ``espeak_data`` (or ``$DISTFAIR_ESPEAK_DATA``,
default: ``espeak-ng-data`` beside the library) its data folder.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from distfair.data._audio import BOUNDS, SAMPLE_RATE, Waveforms, check_length, fix_length, select, to_16k
from distfair.data._base import DataBundle, check_fraction, stratified_split

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029")
DEFAULT_VARIANTS = ("m1", "m3", "f1", "f3")
DEFAULT_SPEEDS = (140, 180, 220)
DEFAULT_PITCHES = (50,)
LIBRARY_ENV = "DISTFAIR_ESPEAK_LIBRARY"
DATA_ENV = "DISTFAIR_ESPEAK_DATA"
#: bump when the generated arrays would change for the same options
FORMAT_VERSION = 1

INSTALL_HINT = ("install the project's pinned engine with `pip install -e .` (the espeakng-loader==0.2.4 wheel, "
                "for Linux x86_64, macOS arm64 and Windows x64, bundles libespeak-ng 1.52 and its voice data), "
                "or set the dataset option "
                f"`espeak_library` (or ${LIBRARY_ENV}) to a libespeak-ng >= 1.52 shared library and "
                f"`espeak_data` (or ${DATA_ENV}) to its espeak-ng-data folder")

_VARIANT = re.compile(r"^[mf][0-9]+$")
_SPEED_RANGE = (80, 450)      # espeakRATE limits, words per minute
_PITCH_RANGE = (0, 99)


#: what every result on this data must say about its subgroups (README, MLflow run descriptions,
#: reports): ``distfair.data.DATASET_NOTICES``
NOTICE = ("spoken_words subgroups (gender, accent, age) are synthetic eSpeak NG voices, not people: "
          "parity gaps say how a model treats engine settings, not any human group")


class EngineMissing(FileNotFoundError):
    """eSpeak NG (library or voice data) is not where the options say; the text says what to
    install or set. A FileNotFoundError, so configuration checks report it as a config problem."""


@dataclass(frozen=True)
class Voice:
    """One synthetic voice of the grid (an engine setting, not a person)."""

    accent: str
    variant: str
    speed: int
    pitch: int

    @property
    def espeak_name(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def id(self) -> str:
        return f"{self.accent}_{self.variant}_s{self.speed}_p{self.pitch}"

    @property
    def gender(self) -> str:
        return "female" if self.variant.startswith("f") else "male"

    @property
    def age(self) -> str:
        return "slow" if self.speed < 160 else ("medium" if self.speed < 200 else "fast")

    def attributes(self) -> dict[str, str]:
        return {"gender": self.gender, "accent": self.accent, "age": self.age, "voice": self.id,
                "variant": self.variant, "speed": str(self.speed), "pitch": str(self.pitch)}


# ------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class Engine:
    """Where libespeak-ng and its data are; synthesis loads a fresh copy of the library per clip."""

    library: str
    data: str

    _lock = threading.Lock()   # eSpeak NG is one global state per loaded copy: one clip at a time

    @classmethod
    def locate(cls, library: str | None, data: str | None) -> "Engine":
        library = library or os.environ.get(LIBRARY_ENV) or None
        data = data or os.environ.get(DATA_ENV) or None
        if library is None:
            try:
                import espeakng_loader
            except ImportError:
                raise EngineMissing(f"spoken_words: eSpeak NG is not installed (no espeakng-loader package); "
                                    f"{INSTALL_HINT}") from None
            library = espeakng_loader.get_library_path()
            data = data or os.path.join(os.path.dirname(library), "espeak-ng-data")
            option = "the espeakng-loader package"
        else:
            data = data or os.path.join(os.path.dirname(os.path.abspath(library)), "espeak-ng-data")
            option = f"espeak_library / ${LIBRARY_ENV}"
        if not os.path.isfile(library):
            raise EngineMissing(f"spoken_words: no eSpeak NG library at {library!r} (from {option}); {INSTALL_HINT}")
        if not os.path.isfile(os.path.join(data, "phondata")):
            raise EngineMissing(f"spoken_words: no eSpeak NG voice data at {data!r} (no phondata; option "
                                f"espeak_data / ${DATA_ENV}); {INSTALL_HINT}")
        return cls(os.path.abspath(library), os.path.abspath(data))

    def variants(self) -> list[str]:
        folder = os.path.join(self.data, "voices", "!v")
        return sorted(n for n in os.listdir(folder) if _VARIANT.match(n)) if os.path.isdir(folder) else []

    @contextlib.contextmanager
    def _fresh(self) -> Iterator[ctypes.CDLL]:
        """A freshly loaded, initialised copy of the library (unloaded afterwards)."""
        with self._lock:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError as err:
                raise EngineMissing(f"spoken_words: cannot load the eSpeak NG library {self.library!r}: {err}; "
                                    f"{INSTALL_HINT}") from None
            try:
                if not hasattr(lib, "espeak_ng_SetRandSeed"):
                    raise EngineMissing(f"spoken_words: the eSpeak NG library {self.library!r} has no "
                                        f"espeak_ng_SetRandSeed (added in 1.52): its noise would be seeded from "
                                        f"the clock and the clips not reproducible; {INSTALL_HINT}")
                lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
                lib.espeak_Info.restype = ctypes.c_char_p
                lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
                lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
                lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
                # AUDIO_OUTPUT_SYNCHRONOUS = 2; espeakINITIALIZE_DONT_EXIT = 0x8000 (else a bad
                # data path makes the library call exit())
                rate = lib.espeak_Initialize(2, 0, self.data.encode(), 0x8000)
                if rate <= 0:
                    raise EngineMissing(f"spoken_words: eSpeak NG could not initialise with the voice data "
                                        f"{self.data!r}; {INSTALL_HINT}")
                try:
                    lib.espeak_ng_SetRandSeed(0)
                    lib.sample_rate = rate
                    yield lib
                finally:
                    lib.espeak_Terminate()
            finally:
                _unload(lib)

    def version(self) -> str:
        with self._fresh() as lib:
            return lib.espeak_Info(None).decode()

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """(int16 samples, sample rate) of ``text`` spoken by ``voice``."""
        chunks: list[bytes] = []

        @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        def collect(wav, n, events):
            if n > 0:
                chunks.append(ctypes.string_at(wav, 2 * n))
            return 0

        with self._fresh() as lib:
            lib.espeak_SetSynthCallback(collect)
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise ValueError(f"spoken_words: eSpeak NG has no voice {voice.espeak_name!r} (accent "
                                 f"{voice.accent!r}: use a voice file name such as {', '.join(DEFAULT_ACCENTS)}; "
                                 f"'en-gb' is not one, 'en' is British English)")
            lib.espeak_SetParameter(1, voice.speed, 0)    # espeakRATE, words per minute
            lib.espeak_SetParameter(3, voice.pitch, 0)    # espeakPITCH, 0-99
            buf = text.encode("utf-8") + b"\0"
            # position 0, POS_CHARACTER = 1, no end position, espeakCHARS_UTF8 = 1
            if lib.espeak_Synth(buf, len(buf), 0, 1, 0, 1, None, None) != 0:
                raise RuntimeError(f"spoken_words: eSpeak NG failed to synthesise {text!r} with {voice.espeak_name!r}")
            lib.espeak_Synchronize()
            rate = lib.sample_rate
        samples = np.frombuffer(b"".join(chunks), dtype=np.int16)
        if samples.size == 0:
            raise RuntimeError(f"spoken_words: eSpeak NG produced no audio for {text!r} with {voice.espeak_name!r}")
        return samples, rate


def _unload(lib: ctypes.CDLL) -> None:
    """Unload the library (dlclose / FreeLibrary) so the next load starts from its pristine
    static state; where that is impossible, generation's reproducibility self-check says so."""
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        with contextlib.suppress(OSError):
            close(lib._handle)


# ----------------------------------------------------------------------------- the grid
def _strings(name: str, values: Sequence[str]) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    if not values or any(not isinstance(v, str) or not v.strip() for v in values):
        raise ValueError(f"{name} must be a non-empty list of non-empty strings, got {values!r}")
    values = [v.strip() for v in values]
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has duplicates: {values}")
    return values


def _ints(name: str, values: Sequence[int], low: int, high: int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high]
    if not values or bad or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct integers in [{low}, {high}], got {values!r}")
    return values


def voice_grid(accents: Sequence[str], variants: Sequence[str], speeds: Sequence[int],
               pitches: Sequence[int]) -> list[Voice]:
    """Every (accent, variant, speed, pitch) combination, in that nesting order."""
    accents = [a.lower() for a in _strings("accents", accents)]
    variants = _strings("variants", variants)
    bad = [v for v in variants if not _VARIANT.match(v)]
    if bad:
        raise ValueError(f"variants must be eSpeak NG's gender-like variants m1..m8 / f1..f5 (spoken as "
                         f"'<accent>+<variant>'), got {bad}")
    speeds = _ints("speeds", speeds, *_SPEED_RANGE)
    pitches = _ints("pitches", pitches, *_PITCH_RANGE)
    return [Voice(a, v, s, p) for a in accents for v in variants for s in speeds for p in pitches]


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


def _generate(engine: Engine, words: list[str], voices: list[Voice], length: int) -> np.ndarray:
    """Synthesise every clip (voice by voice), then resample to 16 kHz and fix the length.

    Resampling runs on batches of clips padded or cropped to one input length: the first
    ``length`` output samples of a clip depend only on its first ``length * rate / 16000``
    input samples plus the sinc filter's reach (under 16 input samples at torchaudio's default
    width of 6 zero crossings), which the margin of 64 covers, and batching is ~50x faster
    than resampling clip by clip."""
    pcm_clips: list[np.ndarray] = []
    seen: dict[tuple[str, str], str] = {}        # (word, pcm digest) -> voice id
    rates = set()
    for voice in voices:
        for word in words:
            pcm, rate = engine.synthesize(voice, word)
            rates.add(rate)
            digest = hashlib.sha256(pcm.tobytes()).hexdigest()
            twin = seen.setdefault((word, digest), voice.id)
            if twin != voice.id:
                raise ValueError(f"spoken_words: voices {twin!r} and {voice.id!r} give identical audio for "
                                 f"{word!r}: eSpeak NG ignored a setting (an accent that is not a voice file name "
                                 f"drops its variant, e.g. 'en-gb+f3'); choose voices that differ")
            pcm_clips.append(pcm)
    again, _ = engine.synthesize(voices[0], words[0])
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
        waves[start:start + len(chunk)] = fix_length(to_16k(chunk, rate), length).numpy()
    return waves


def _waveforms(engine_options: tuple[str | None, str | None], words: list[str], voices: list[Voice],
               length: int, root: str) -> np.ndarray:
    """The (clips, length) array of the grid: from the cache, else generated and cached."""
    key = _digest({"format": FORMAT_VERSION, "words": words, "voices": [v.id for v in voices],
                   "length": length, "sample_rate": SAMPLE_RATE})
    folder = os.path.join(root, key[:20])
    shape = (len(voices) * len(words), length)
    waves = _load_cached(folder, key, shape)
    if waves is not None:
        return waves
    engine = Engine.locate(*engine_options)
    os.makedirs(folder, exist_ok=True)
    with _locked(os.path.join(folder, ".lock")):
        waves = _load_cached(folder, key, shape)       # another process may have made it meanwhile
        if waves is not None:
            return waves
        waves = _generate(engine, words, voices, length)
        tmp = os.path.join(folder, f"waveforms.{os.getpid()}.npy")
        np.save(tmp, waves)
        os.replace(tmp, os.path.join(folder, "waveforms.npy"))
        manifest = {"key": key, "format": FORMAT_VERSION, "sha256": hashlib.sha256(waves.tobytes()).hexdigest(),
                    "engine": {"version": engine.version(), "library": engine.library, "data": engine.data},
                    "sample_rate": SAMPLE_RATE, "length": length, "words": words,
                    "voices": [{"id": v.id, **v.attributes()} for v in voices],
                    "note": NOTICE}
        tmp = os.path.join(folder, f"manifest.{os.getpid()}.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(folder, "manifest.json"))   # written last: marks the folder complete
    return waves


# ----------------------------------------------------------------------------- the data set
def spoken_words(*, words: tuple[str, ...] = DIGIT_WORDS, accents: tuple[str, ...] = DEFAULT_ACCENTS,
                 variants: tuple[str, ...] = DEFAULT_VARIANTS, speeds: tuple[int, ...] = DEFAULT_SPEEDS,
                 pitches: tuple[int, ...] = DEFAULT_PITCHES, length: int = SAMPLE_RATE,
                 test_fraction: float = 0.2, val_fraction: float = 0.1, split_seed: int = 0,
                 root: str | None = None, espeak_library: str | None = None,
                 espeak_data: str | None = None) -> DataBundle:
    """Synthetic spoken ``words`` (the classes, in this order) by every voice of the grid
    ``accents x variants x speeds x pitches``, split by held-out voice (module docstring).

    Defaults: the ten digits, 5 accents x 4 variants (m1, m3, f1, f3) x 3 speeds (140, 180,
    220 wpm) x pitch 50 = 60 voices, 600 one-second clips (generated in a few seconds on
    first use); ``test_fraction`` / ``val_fraction`` of the voices of each (gender, accent)
    stratum: 10 test, 10 validation and 40 training voices. ``root``: the cache folder
    (default ``~/.cache/distfair/spoken_words``). ``espeak_library`` / ``espeak_data``:
    another eSpeak NG build than the pinned wheel's.
    """
    words = [w.lower() for w in _strings("words", words)]
    voices = voice_grid(accents, variants, speeds, pitches)
    check_length(length)
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    engine_options = (espeak_library, espeak_data)
    with contextlib.suppress(EngineMissing):     # a missing engine matters only if the grid is not cached
        known = Engine.locate(*engine_options).variants()
        missing = [v for v in dict.fromkeys(v.variant for v in voices) if v not in known]
        if missing:
            raise ValueError(f"variants {missing} are not eSpeak NG variants; this engine has {known}")
    root = os.path.abspath(os.path.expanduser(root)) if root else default_root()

    strata = {s: i for i, s in enumerate(dict.fromkeys((v.gender, v.accent) for v in voices))}
    split = dict(zip(("test", "val", "train"), stratified_split(
        [strata[(v.gender, v.accent)] for v in voices], [test_fraction, val_fraction], split_seed)))
    for name, chosen in split.items():
        if len(chosen) == 0:
            raise ValueError(f"spoken_words: the {name} split has no voice ({len(voices)} voices in "
                             f"{len(strata)} (gender, accent) strata, test_fraction={test_fraction}, "
                             f"val_fraction={val_fraction}): add voices (variants, speeds, pitches) or "
                             f"raise the fraction")

    waves = torch.from_numpy(_waveforms(engine_options, words, voices, length, root)).unsqueeze(1)
    voice_of_clip = np.repeat(np.arange(len(voices)), len(words))
    targets = np.tile(np.arange(len(words)), len(voices))
    attributes = {name: [voices[v].attributes()[name] for v in voice_of_clip] for name in voices[0].attributes()}
    parts = {}
    for name, chosen in split.items():
        idx = np.flatnonzero(np.isin(voice_of_clip, chosen))
        parts[name] = Waveforms(waves[idx], targets[idx].tolist(), select(attributes, idx))
    return DataBundle(parts["train"], parts["val"], parts["test"], num_classes=len(words),
                      in_shape=(1, length), bounds=BOUNDS, class_names=words,
                      test_attributes=dict(parts["test"].attributes), val_attributes=dict(parts["val"].attributes))
