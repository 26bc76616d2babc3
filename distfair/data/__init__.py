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


#: the ``split_seed`` value that asks for one split per training seed (datasets whose
#: ``split_seed`` accepts it: ``spoken_words``); :func:`build_dataset` resolves it
PER_SEED = "per_seed"


def build_dataset(name: str, *, run_seed: int | None = None, **params) -> DataBundle:
    """The dataset ``name`` built with ``params`` (its options). ``run_seed``: the training seed,
    which ``split_seed: per_seed`` becomes (the engine passes it for every seed). Without one
    (configuration checks, :func:`distfair.config.dataset_spec`), ``per_seed`` stands for seed
    0's split: the classes, shapes, split sizes and attribute values are the same for every
    seed, only which samples land in which split differs."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if params.get("split_seed") == PER_SEED:
        params["split_seed"] = 0 if run_seed is None else run_seed
    return DATASETS[name](**params)


__all__ = ["DATASETS", "DATASET_NOTICES", "PER_SEED", "DataBundle", "build_dataset", "stratified_split"]

# the dataset functions are not exported by name: most share their module's name (digits.digits)
lazy_package(__name__, {"DataBundle": "._base:DataBundle", "stratified_split": "._base:stratified_split"})
