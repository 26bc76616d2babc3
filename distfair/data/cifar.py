"""CIFAR-10 / CIFAR-100 through torchvision, from a local ``root`` (Sy-FAR §5, Table 1).

Nothing is downloaded unless the config says ``download: true``. Files already on disk in
torchvision's layout (``cifar-10-batches-py/`` or ``cifar-100-python/``) must pass
torchvision's own MD5 check of every batch and of the meta file before they are unpickled
(in every worker: the batches are pickles, and a replaced one on shared storage would run its
code; issue 28 §2). A copy that fails it is refused, naming the folder. The tests register
the checksums of the small stand-ins they write (``tests/test_data.py``).
"""
from __future__ import annotations

import os

from torch.utils.data import Subset
from torchvision import datasets, transforms

from distfair.data._base import DataBundle, check_fraction, stratified_split


class _CIFAR10(datasets.CIFAR10):
    pass


class _CIFAR100(datasets.CIFAR100):
    pass


def _cifar(cls, num_classes, root, download, augment, split_seed, val_fraction) -> DataBundle:
    check_fraction("val_fraction", val_fraction)
    root = os.path.expanduser(root)
    plain = transforms.ToTensor()
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()]) if augment else plain
    folder = os.path.join(root, cls.base_folder)
    try:
        train_aug = cls(root, train=True, transform=train_tf, download=download)
    except RuntimeError as err:
        if os.path.isdir(folder) and not download:
            raise ValueError(f"{cls.__mro__[1].__name__} under {folder!r} fails torchvision's MD5 check of its "
                             f"files (corrupted, incomplete or replaced): put torchvision's original "
                             f"'{cls.base_folder}' there, or set dataset.download: true") from err
        raise FileNotFoundError(
            f"{cls.__mro__[1].__name__} not found under {root!r} ({err}); put torchvision's "
            f"'{cls.base_folder}' folder there or set dataset.download: true") from err
    train_plain = cls(root, train=True, transform=plain)
    test = cls(root, train=False, transform=plain)
    val_idx, train_idx = stratified_split(train_aug.targets, [val_fraction], split_seed)
    return DataBundle(Subset(train_aug, train_idx.tolist()), Subset(train_plain, val_idx.tolist()), test,
                      num_classes=num_classes, in_shape=(3, 32, 32), bounds=(0.0, 1.0),
                      class_names=list(train_plain.classes))


def cifar10(*, root: str, download: bool = False, augment: bool = True, split_seed: int = 0,
            val_fraction: float = 0.1) -> DataBundle:
    """CIFAR-10: 50k train (minus validation), 10k test; random crop + flip when ``augment``."""
    return _cifar(_CIFAR10, 10, root, download, augment, split_seed, val_fraction)


def cifar100(*, root: str, download: bool = False, augment: bool = True, split_seed: int = 0,
             val_fraction: float = 0.1) -> DataBundle:
    """CIFAR-100 (fine labels), same protocol as :func:`cifar10`."""
    return _cifar(_CIFAR100, 100, root, download, augment, split_seed, val_fraction)


