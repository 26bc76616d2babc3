"""The voice grid of ``spoken_words`` (:mod:`distfair.data.spoken_words` describes it): a
:class:`Voice` is one eSpeak NG setting (accent, variant, speed, pitch), **a synthetic voice,
not a person**, and :func:`voice_grid` checks the options and crosses them; :class:`Jitter`
is the seeded per-utterance variation within a voice (opt-in: off by default)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029")
DEFAULT_VARIANTS = ("m1", "m3", "f1", "f3")
DEFAULT_SPEEDS = (140, 180, 220)
DEFAULT_PITCHES = (50,)

#: every gender-labelled variant eSpeak NG 1.52 ships (``espeak-ng-data/voices/!v``): 8 male-labelled,
#: 5 female-labelled timbres. Its other ~90 variants (named ones such as ``Annie``, ``klatt``,
#: ``whisper``) are community-made or effect voices and are not accepted.
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")

_VARIANT = re.compile(r"^[mf][0-9]+$")
_SPEED_RANGE = (80, 450)      # espeakRATE limits, words per minute
_PITCH_RANGE = (0, 99)


#: what every result on this data must say about its subgroups (README, MLflow run descriptions,
#: reports): ``distfair.data.DATASET_NOTICES``
NOTICE = ("spoken_words subgroups (gender, accent, age) are synthetic eSpeak NG voices, not people: "
          "parity gaps say how a model treats engine settings, not any human group")


def age_of(speed: int) -> str:
    """The age-like bucket of a speaking rate (words per minute)."""
    return "slow" if speed < 160 else ("medium" if speed < 200 else "fast")


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
        return age_of(self.speed)

    def attributes(self) -> dict[str, str]:
        return {"gender": self.gender, "accent": self.accent, "age": self.age, "voice": self.id,
                "variant": self.variant, "speed": str(self.speed), "pitch": str(self.pitch)}


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


#: the voice attributes the split may be stratified by (``stratify``)
STRATA = ("gender", "accent", "age")


def check_stratify(stratify: Sequence[str]) -> list[str]:
    stratify = _strings("stratify", stratify)
    bad = [s for s in stratify if s not in STRATA]
    if bad:
        raise ValueError(f"stratify must name voice attributes among {', '.join(STRATA)}, got {bad}")
    return stratify


@dataclass(frozen=True)
class Jitter:
    """Per-utterance variation within a voice: each (voice, word) is said ``repeats`` times, and
    each utterance draws its own eSpeak pitch (the voice's ± ``pitch``), rate (the voice's ±
    ``rate`` words per minute) and gain (± ``gain_db`` dB, applied to the engine's output) from
    a generator seeded by (``seed``, voice, word, utterance) alone, so a clip's draw does not
    depend on the rest of the grid. The voice's attributes stay its nominal ones (``age`` is the
    bucket of the nominal rate, which the jittered rate never leaves)."""

    repeats: int = 1
    pitch: int = 0
    rate: int = 0
    gain_db: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return bool(self.pitch or self.rate or self.gain_db)

    def key(self) -> dict:
        """What the cache key adds: nothing when off (so grids cached before jitter existed stay valid)."""
        if self.repeats == 1 and not self.active:
            return {}
        return {"jitter": {**dataclasses.asdict(self), "gain_db": float(self.gain_db)}}

    def check(self, voices: Sequence[Voice]) -> None:
        def integer(name, value, low, high):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

        integer("repeats", self.repeats, 1, 100)
        integer("pitch_jitter", self.pitch, 0, 49)
        integer("rate_jitter", self.rate, 0, 100)
        integer("jitter_seed", self.seed, 0, 2**63 - 1)
        gain = self.gain_db
        if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not (math.isfinite(gain) and 0 <= gain <= 20):
            raise ValueError(f"gain_jitter_db must be a number of dB in [0, 20], got {gain!r}")
        if self.repeats > 1 and not self.active:
            raise ValueError(f"repeats={self.repeats} needs within-voice jitter (pitch_jitter, rate_jitter or "
                             f"gain_jitter_db > 0): without it the repeats are identical copies")
        for v in voices:
            low, high = v.pitch - self.pitch, v.pitch + self.pitch
            if low < _PITCH_RANGE[0] or high > _PITCH_RANGE[1]:
                raise ValueError(f"pitch_jitter={self.pitch} takes voice {v.id}'s pitch {v.pitch} outside "
                                 f"{list(_PITCH_RANGE)} ({low}..{high})")
            low, high = v.speed - self.rate, v.speed + self.rate
            if low < _SPEED_RANGE[0] or high > _SPEED_RANGE[1]:
                raise ValueError(f"rate_jitter={self.rate} takes voice {v.id}'s speed {v.speed} outside "
                                 f"{list(_SPEED_RANGE)} wpm ({low}..{high})")
            if {age_of(low), age_of(high)} != {v.age}:
                raise ValueError(f"rate_jitter={self.rate} takes voice {v.id}'s speed {v.speed} ({v.age}) out of "
                                 f"its age bucket ({low}..{high} wpm; slow < 160 <= medium < 200 <= fast)")

    def draw(self, voice: Voice, word: str, utterance: int) -> tuple[Voice, float]:
        """(the voice this utterance is spoken with, its linear gain); the voice itself and 1.0
        when jitter is off."""
        if not self.active:
            return voice, 1.0
        digest = hashlib.sha256(json.dumps([self.seed, voice.id, word, utterance]).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        pitch = voice.pitch + int(rng.integers(-self.pitch, self.pitch + 1))
        speed = voice.speed + int(rng.integers(-self.rate, self.rate + 1))
        gain_db = float(rng.uniform(-self.gain_db, self.gain_db)) if self.gain_db else 0.0
        return dataclasses.replace(voice, speed=speed, pitch=pitch), 10.0 ** (gain_db / 20.0)
