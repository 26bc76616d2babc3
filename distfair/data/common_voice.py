"""Common Voice single-word clips (speech paper §4.1's second data set) from a local folder.

Nothing is downloaded: ``root`` is one locale folder of a Common Voice release, e.g. the
"Single Word Target Segment" release ``cv-corpus-7.0-singleword/en`` (or a full release's
``en`` folder, whose tables also hold the single-word clips), laid out as Common Voice ships
it::

    root/train.tsv  root/dev.tsv  root/test.tsv      tab-separated, one header line
    root/clips/common_voice_en_21850040.mp3          the clips the tables' ``path`` names

The tables' columns are Common Voice's: ``client_id`` (the speaker), ``path``, ``sentence``
(the word spoken), ``up_votes``, ``down_votes``, ``age``, ``gender``, ``accent`` (``accents``
from release 10 on), ``locale``, ``segment`` (and ``variant`` later); only ``client_id``,
``path`` and ``sentence`` are required. Common Voice's train/dev/test tables never share a
speaker, and the loader checks it (the paper's open-user threat model, §4.1): ``train.tsv``
-> train, ``dev.tsv`` -> validation, ``test.tsv`` -> test.

Classes are ``words`` in the order given; a row's word is its ``sentence`` lower-cased and
stripped of surrounding punctuation, and rows with any other word are left out. The default
is the paper's 13 classes: the digits "zero".."nine", "yes", "no" and "hey" ("Firefox", the
segment's 14th word, dropped). Clips are read on access (``soundfile``: MP3 as shipped, or
WAV/FLAC), resampled from their rate (48 kHz as shipped) to 16 kHz
(``torchaudio.functional.resample``) and zero-padded or cropped at the end to ``length``
samples (default 48,000 = 3 s: the clips average about 2.7 s, the word usually early),
values in [-1, 1].

Per-sample attributes, lower-cased, with an empty field as "unknown" (many contributors
leave them blank; ``eval.subgroups`` leaves "unknown" out of every group by default):
``gender``, ``age`` (Common Voice's decades: "teens", "twenties", ...), ``accent`` (from
``accent`` or ``accents``) and ``speaker`` (``client_id``), in
``DataBundle.test_attributes`` / ``val_attributes`` / ``train_attributes`` and ``<split>.attributes``.
``max_per_split`` keeps the first rows (in table order) of each table, for quick runs.
"""
from __future__ import annotations

import csv
import io
import itertools
import os

from distfair.data._audio import BOUNDS, SAMPLE_RATE, AudioClips, check_length, select
from distfair.data._base import DataBundle, read_text_file

PAPER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "yes", "no", "hey")
TABLES = (("train", "train.tsv"), ("val", "dev.tsv"), ("test", "test.tsv"))
_STRIP = " \t.,!?;:'\"“”‘’"


def normalise_word(sentence: str) -> str:
    return sentence.strip().strip(_STRIP).lower()


def _read_table(path: str) -> tuple[list[str], list[dict[str, str]]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"common_voice_clips: no table {path!r} (root must be a Common Voice locale folder "
                                f"with train.tsv, dev.tsv, test.tsv and clips/; nothing is downloaded)")
    text = read_text_file(path, f"common_voice_clips: table {path!r}")
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [c.strip() for c in next(reader, [])]
        missing = [c for c in ("client_id", "path", "sentence") if c not in header]
        if missing:
            raise ValueError(f"common_voice_clips: table {path!r} lacks the column(s) {', '.join(missing)}; "
                             f"its columns are {header}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):      # trailing empty fields may be cut off
                row = row + [""] * (len(header) - len(row))
            if len(row) != len(header):
                raise ValueError(f"common_voice_clips: table {path!r}, line {line}: {len(row)} fields, "
                                 f"expected {len(header)}")
            rows.append(dict(zip(header, row)))
    return header, rows


def common_voice_clips(*, root: str, words: tuple[str, ...] = PAPER_WORDS, length: int = 3 * SAMPLE_RATE,
                       max_per_split: int | None = None) -> DataBundle:
    """Common Voice single-word clips under ``root`` (module docstring), Common Voice's own
    speaker-disjoint train/dev/test split."""
    words = [w.strip().lower() for w in ([words] if isinstance(words, str) else list(words))]
    if not words or any(not w for w in words) or len(set(words)) != len(words):
        raise ValueError(f"words must be a non-empty list of distinct words, got {words!r}")
    check_length(length)
    if max_per_split is not None and max_per_split < 1:
        raise ValueError(f"max_per_split must be >= 1 or None, got {max_per_split}")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"common_voice_clips: root {root!r} is not a directory (a Common Voice locale "
                                f"folder such as cv-corpus-7.0-singleword/en; nothing is downloaded)")
    label = {w: i for i, w in enumerate(words)}

    parts, speakers = {}, {}
    for part, name in TABLES:
        path = os.path.join(root, name)
        header, rows = _read_table(path)
        accent_col = "accents" if "accents" in header else ("accent" if "accent" in header else None)
        columns = {"gender": "gender" if "gender" in header else None, "age": "age" if "age" in header else None,
                   "accent": accent_col}
        rows = [r for r in rows if normalise_word(r["sentence"]) in label]
        if max_per_split is not None:
            rows = rows[:max_per_split]
        clips = [os.path.join(root, "clips", r["path"].strip()) for r in rows]
        absent = [c for c in clips if not os.path.isfile(c)]
        if absent:
            raise FileNotFoundError(f"common_voice_clips: {name} names clip {absent[0]!r}, which is not there"
                                    + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else ""))
        attributes = {attr: [r[col].strip().lower() or "unknown" for r in rows]
                      for attr, col in columns.items() if col is not None}
        attributes["speaker"] = [r["client_id"].strip() for r in rows]
        speakers[part] = set(attributes["speaker"])
        parts[part] = AudioClips(clips, [label[normalise_word(r["sentence"])] for r in rows], attributes, length)

    for (a, name_a), (b, name_b) in itertools.combinations(TABLES, 2):
        shared = speakers[a] & speakers[b]
        if shared:
            raise ValueError(f"common_voice_clips: {name_a} and {name_b} share {len(shared)} speaker(s) "
                             f"(client_id {sorted(shared)[0]!r}, ...): Common Voice's splits are speaker-disjoint, "
                             f"and so must these tables be")
    for part, name in TABLES:
        if len(parts[part]) == 0:
            raise ValueError(f"common_voice_clips: {name} has no clip of the words {words}")
    present = {t for ds in parts.values() for t in ds.targets}
    missing = [w for i, w in enumerate(words) if i not in present]
    if missing:
        raise ValueError(f"common_voice_clips: no clip of {missing} in train.tsv, dev.tsv or test.tsv; check the "
                         f"spelling or drop them from words")
    return DataBundle(parts["train"], parts["val"], parts["test"], num_classes=len(words), in_shape=(1, length),
                      bounds=BOUNDS, class_names=list(words),
                      test_attributes=select(parts["test"].attributes, range(len(parts["test"]))),
                      val_attributes=select(parts["val"].attributes, range(len(parts["val"]))),
                      train_attributes=select(parts["train"].attributes, range(len(parts["train"]))))
