"""Datasets: each is a function returning a :class:`DataBundle`; adding one is one file plus
one line in ``DATASETS``. Options are keyword-only arguments, which the config validator
reads from the signature. Entries are imported on first use (``distfair.registry.Registry``):
the configuration checks the names without importing PyTorch or scikit-learn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from distfair.registry import Registry, lazy_package

if TYPE_CHECKING:
    from distfair.data._base import DataBundle

DATASETS = Registry(__name__, {
    "digits": ".digits:digits",
    "mnist1d": ".mnist1d:mnist1d",
    "cifar10": ".cifar:cifar10",
    "cifar100": ".cifar:cifar100",
    "synthetic": ".synthetic:synthetic",
    "faces": ".faces:faces",
    "spoken_words": ".spoken_words:spoken_words",
    "audiomnist": ".audiomnist:audiomnist",
    "common_voice_clips": ".common_voice:common_voice_clips",
})

#: dataset -> what every result on it must say (the run's MLflow description, reports)
DATASET_NOTICES = Registry(__name__, {
    "spoken_words": ".spoken_words:NOTICE",
})


def build_dataset(name: str, **params) -> DataBundle:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**params)


__all__ = ["DATASETS", "DATASET_NOTICES", "DataBundle", "build_dataset", "stratified_split"]

# the dataset functions are not exported by name: most share their module's name (digits.digits)
lazy_package(__name__, {"DataBundle": "._base:DataBundle", "stratified_split": "._base:stratified_split"})
