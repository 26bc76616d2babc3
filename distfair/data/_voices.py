"""The voice grid of ``spoken_words`` (:mod:`distfair.data.spoken_words` describes it): a
:class:`Voice` is one eSpeak NG setting (accent, variant, speed, pitch), **a synthetic voice,
not a person**, and :func:`voice_grid` checks the options and crosses them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

DEFAULT_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029")
DEFAULT_VARIANTS = ("m1", "m3", "f1", "f3")
DEFAULT_SPEEDS = (140, 180, 220)
DEFAULT_PITCHES = (50,)

_VARIANT = re.compile(r"^[mf][0-9]+$")
_SPEED_RANGE = (80, 450)      # espeakRATE limits, words per minute
_PITCH_RANGE = (0, 99)


#: what every result on this data must say about its subgroups (README, MLflow run descriptions,
#: reports): ``distfair.data.DATASET_NOTICES``
NOTICE = ("spoken_words subgroups (gender, accent, age) are synthetic eSpeak NG voices, not people: "
          "parity gaps say how a model treats engine settings, not any human group")


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
