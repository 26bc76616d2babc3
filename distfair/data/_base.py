"""The data contract: a ``DataBundle`` of train / validation / test sets plus what models and
attacks need to know about them (class count, input shape, valid input range).

Validation is always carved from the training data (methods.md "Conventions": model
selection never looks at the test set). Splits are decided by an explicit ``split_seed``,
independent of the run seed, so every seed of a configuration sees the same split, unless a
dataset accepts ``split_seed: per_seed`` (``spoken_words``) and the configuration asks for it:
then :func:`distfair.data.build_dataset` passes each training seed as the split seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_shape: tuple
    #: (low, high): the valid input range, used by attacks for clamping
    bounds: tuple[float, float]
    class_names: list[str] = field(default_factory=list)
    #: optional class-level metadata: attribute name -> one value per class, in class order
    #: (e.g. ``{"gender": ["F", "M", ...]}`` for the identities of a face set); used to
    #: group classes into subgroups (Sy-FAR §7). Empty when the dataset has none.
    class_attributes: dict[str, list[str]] = field(default_factory=dict)
    #: optional per-sample metadata of the *test* set: attribute name -> one value per test
    #: sample, in ``test`` order (``test_attributes[a][i]`` describes ``test[i]``). Empty when
    #: the dataset has none.
    test_attributes: dict[str, list[str]] = field(default_factory=dict)
    #: the same for the *validation* set (``val_attributes[a][i]`` describes ``val[i]``), so the
    #: end-of-training validation pass can report per-sample subgroup metrics too
    val_attributes: dict[str, list[str]] = field(default_factory=dict)
    #: the same for the *training* set (``train_attributes[a][i]`` describes ``train[i]``), so a
    #: run can record each group's training-set size |X_train,s| (speech paper 003 §5.2.2)
    train_attributes: dict[str, list[str]] = field(default_factory=dict)


#: the most samples a generated data set (``synthetic``, ``mnist1d``) may be asked for:
#: validation generates it, on the machine that submits the work (issue 28 §7)
MAX_GENERATED_SAMPLES = 1_000_000
#: the most values (samples x features) of a generated data set: 400 MB of float32
MAX_GENERATED_VALUES = 100_000_000


def check_at_most(name: str, value: int, high: int) -> None:
    """ValueError if ``value`` is over ``high`` (an upper bound on a size)."""
    if value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into ``len(fractions) + 1`` parts, stratified by label.

    ``fractions`` are the sizes of the leading parts as fractions of the whole; the last part
    takes the rest. Within each class the indices are permuted with ``seed`` and cut at the
    rounded cumulative fractions, so every part keeps the class proportions and the split is
    a pure function of (labels, fractions, seed).
    """
    labels = np.asarray(labels)
    if sum(fractions) >= 1:
        raise ValueError(f"split fractions must sum to < 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def read_text_file(path: str, what: str, *, encoding: str = "utf-8") -> str:
    """The text of a metadata file the user points at; ``ValueError`` starting with ``what``
    (e.g. ``faces metadata '<path>'``) when it is not UTF-8 text (a binary file, a NUL byte),
    so the configuration check names the file and the reason instead of a decoder traceback."""
    try:
        with open(path, newline="", encoding=encoding) as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} is not a UTF-8 text file (byte {err.object[err.start]:#04x} at "
                         f"offset {err.start})") from None
    if "\x00" in text:
        raise ValueError(f"{what} is not a text file (a NUL byte on line "
                         f"{text[:text.index(chr(0))].count(chr(10)) + 1})")
    return text
