"""Datasets: each is a function returning a :class:`DataBundle`; adding one is one file plus
one line in ``DATASETS``. Options are keyword-only arguments, which the config validator
reads from the signature.
"""
from __future__ import annotations

from typing import Callable

from distfair.data._base import DataBundle, stratified_split
from distfair.data.audiomnist import audiomnist
from distfair.data.cifar import cifar10, cifar100
from distfair.data.common_voice import common_voice_clips
from distfair.data.digits import digits
from distfair.data.faces import faces
from distfair.data.mnist1d import mnist1d
from distfair.data.spoken_words import NOTICE as SPOKEN_WORDS_NOTICE
from distfair.data.spoken_words import spoken_words
from distfair.data.synthetic import synthetic

DATASETS: dict[str, Callable[..., DataBundle]] = {
    "digits": digits,
    "mnist1d": mnist1d,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "synthetic": synthetic,
    "faces": faces,
    "spoken_words": spoken_words,
    "audiomnist": audiomnist,
    "common_voice_clips": common_voice_clips,
}

#: dataset -> what every result on it must say (the run's MLflow description, reports)
DATASET_NOTICES: dict[str, str] = {
    "spoken_words": SPOKEN_WORDS_NOTICE,
}


def build_dataset(name: str, **params) -> DataBundle:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**params)


__all__ = ["DATASETS", "DATASET_NOTICES", "DataBundle", "build_dataset", "stratified_split"]
