"""AudioMNIST (Becker et al.; speech paper §4.1's first data set) from a local folder.

Nothing is downloaded: ``root`` must hold the data set's own layout::

    root/data/audioMNIST_meta.txt           JSON: speaker -> {"gender", "accent", "age",
                                            "native speaker", "origin", ...}
    root/data/01/0_01_0.wav                 <digit>_<speaker>_<repetition>.wav
    ...
    root/data/60/9_60_49.wav

60 speakers x 10 digits x 50 repetitions, mono WAV at 48 kHz; each clip is read on access
(``soundfile``), resampled to 16 kHz (``torchaudio.functional.resample``), zero-padded or
cropped at the end to ``length`` samples (default 16,000 = 1 s, longer than every clip),
values in [-1, 1]. Classes are the digits "0".."9".

Per-sample attributes (``DataBundle.test_attributes`` / ``val_attributes`` / ``train_attributes``, and
``<split>.attributes`` for every split) come from the metadata file, lower-cased:
``gender``, ``accent``, ``native`` (the "native speaker" field, "yes"/"no"), ``age`` (a
decade, "20s", "30s", ...; "unknown" when the field is not a plausible age: the published
file gives speaker 45 the age "1234"; ``eval.subgroups`` leaves "unknown" out of every group
by default), ``age_years`` (the field as written) and ``speaker``.

Splits (``split``):

- ``"random"`` (the paper's, §4.1: "a random train/validation/test split, ensuring each
  user has equal representation and class representation with a ratio of 7:1:2"):
  stratified by (speaker, digit), so train and test share every speaker (methods.md: the
  paper's threat model is known users).
- ``"speaker"``: held-out speakers, stratified by gender; no speaker in two splits.

``test_fraction`` (default 0.2) and ``val_fraction`` (0.1) are fractions of the clips
("random") or of the speakers ("speaker"); ``split_seed`` seeds it. ``max_per_speaker``
keeps the first repetitions (by index) of each (speaker, digit) for quick runs.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from distfair.data._audio import BOUNDS, SAMPLE_RATE, AudioClips, check_length, select
from distfair.data._base import DataBundle, check_fraction, stratified_split

SPLITS = ("random", "speaker")
_CLIP = re.compile(r"^(\d)_(\d+)_(\d+)\.wav$", re.IGNORECASE)


def _age_decade(value) -> str:
    try:
        years = int(str(value).strip())
    except ValueError:
        return "unknown"
    return f"{years // 10 * 10}s" if 0 < years < 120 else "unknown"


def _read_meta(path: str) -> dict[str, dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audiomnist: no metadata file {path!r} (expected root/data/audioMNIST_meta.txt, "
                                f"as the data set ships it; nothing is downloaded)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"audiomnist: metadata {path!r} is not a UTF-8 text file (byte "
                         f"{err.object[err.start]:#04x} at offset {err.start})") from None
    except ValueError as err:
        raise ValueError(f"audiomnist: metadata {path!r} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise ValueError(f"audiomnist: metadata {path!r} must map speaker ids to attribute objects")
    out = {}
    for speaker, fields in meta.items():
        missing = [k for k in ("gender", "accent", "age", "native speaker") if k not in fields]
        if missing:
            raise ValueError(f"audiomnist: metadata {path!r}, speaker {speaker!r} lacks {', '.join(missing)}")
        if not str(speaker).strip().isdigit():
            raise ValueError(f"audiomnist: metadata {path!r}: speaker id {speaker!r} is not a number (AudioMNIST's "
                             f"speakers are 01..60, as its folder names)")
        out[f"{int(speaker):02d}"] = {
            "gender": str(fields["gender"]).strip().lower(),
            "accent": str(fields["accent"]).strip().lower(),
            "native": str(fields["native speaker"]).strip().lower(),
            "age": _age_decade(fields["age"]),
            "age_years": str(fields["age"]).strip(),
        }
    return out


def _scan(data_dir: str, max_per_speaker: int | None) -> tuple[list[str], list[int], list[str]]:
    """(clip paths, digits, speaker ids), sorted by speaker, digit, repetition."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"audiomnist: {data_dir!r} is not a directory (root must hold data/<speaker>/"
                                f"<digit>_<speaker>_<index>.wav and data/audioMNIST_meta.txt; nothing is downloaded)")
    records = []
    for entry in os.scandir(data_dir):
        if not entry.is_dir() or not entry.name.isdigit():
            continue
        for clip in os.scandir(entry.path):
            match = _CLIP.match(clip.name)
            if match and clip.is_file():
                digit, speaker, rep = (int(g) for g in match.groups())
                if speaker != int(entry.name):
                    raise ValueError(f"audiomnist: {clip.path!r} names speaker {speaker} inside folder {entry.name!r}")
                records.append((speaker, digit, rep, clip.path))
    if not records:
        raise ValueError(f"audiomnist: no clips <digit>_<speaker>_<index>.wav under {data_dir!r}/<speaker>/")
    records.sort()
    if max_per_speaker is not None:
        kept, count = [], {}
        for rec in records:
            key = rec[:2]
            count[key] = count.get(key, 0) + 1
            if count[key] <= max_per_speaker:
                kept.append(rec)
        records = kept
    return [r[3] for r in records], [r[1] for r in records], [f"{r[0]:02d}" for r in records]


def audiomnist(*, root: str, split: str = "random", length: int = SAMPLE_RATE, test_fraction: float = 0.2,
               val_fraction: float = 0.1, split_seed: int = 0, max_per_speaker: int | None = None) -> DataBundle:
    """AudioMNIST under ``root`` (module docstring): digits 0-9, per-sample speaker attributes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_length(length)
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    if max_per_speaker is not None and max_per_speaker < 1:
        raise ValueError(f"max_per_speaker must be >= 1 or None, got {max_per_speaker}")
    data_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), "data")
    paths, digits, speakers = _scan(data_dir, max_per_speaker)
    meta = _read_meta(os.path.join(data_dir, "audioMNIST_meta.txt"))
    unknown = sorted(set(speakers) - set(meta))
    if unknown:
        raise ValueError(f"audiomnist: speakers {unknown} have clips but no entry in audioMNIST_meta.txt")
    attributes = {name: [meta[s][name] for s in speakers]
                  for name in ("gender", "accent", "native", "age", "age_years")}
    attributes["speaker"] = list(speakers)

    if split == "random":
        strata = {k: i for i, k in enumerate(dict.fromkeys(zip(speakers, digits)))}
        test_idx, val_idx, train_idx = stratified_split([strata[k] for k in zip(speakers, digits)],
                                                        [test_fraction, val_fraction], split_seed)
    else:
        ids = sorted(set(speakers))
        genders = {g: i for i, g in enumerate(sorted({meta[s]["gender"] for s in ids}))}
        parts = stratified_split([genders[meta[s]["gender"]] for s in ids], [test_fraction, val_fraction], split_seed)
        speaker_arr = np.asarray(speakers)
        test_idx, val_idx, train_idx = (np.flatnonzero(np.isin(speaker_arr, [ids[i] for i in p])) for p in parts)
    for name, idx in (("test", test_idx), ("val", val_idx), ("train", train_idx)):
        if len(idx) == 0:
            raise ValueError(f"audiomnist under {root!r}: the {name} split is empty (split={split!r}, "
                             f"test_fraction={test_fraction}, val_fraction={val_fraction}, {len(set(speakers))} "
                             f"speakers, {len(paths)} clips)")

    def part(idx) -> AudioClips:
        return AudioClips([paths[i] for i in idx], [digits[i] for i in idx], select(attributes, idx), length)

    train, val, test = part(train_idx), part(val_idx), part(test_idx)
    return DataBundle(train, val, test, num_classes=10, in_shape=(1, length), bounds=BOUNDS,
                      class_names=[str(d) for d in range(10)], test_attributes=dict(test.attributes),
                      val_attributes=dict(val.attributes), train_attributes=dict(train.attributes))
