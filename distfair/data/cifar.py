"""CIFAR-10 / CIFAR-100 through torchvision, from a local ``root`` (Sy-FAR §5, Table 1).

Nothing is downloaded unless the config says ``download: true``. Files already on disk in
torchvision's layout (``cifar-10-batches-py/`` or ``cifar-100-python/``) are trusted as they
are: torchvision's MD5 check only runs on the download path, so a locally prepared copy
(or the small stand-ins the tests write) loads too.
"""
from __future__ import annotations

import os
import pickle

from torch.utils.data import Subset
from torchvision import datasets, transforms

from distfair.data._base import DataBundle, check_fraction, stratified_split


class _TrustLocalFiles:
    """Mixin: files present on disk are enough (no MD5 of every batch at every start)."""

    def _check_integrity(self) -> bool:
        names = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, n)) for n in names)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10(_TrustLocalFiles, datasets.CIFAR10):
    pass


class _CIFAR100(_TrustLocalFiles, datasets.CIFAR100):
    pass


def _cifar(cls, num_classes, root, download, augment, split_seed, val_fraction) -> DataBundle:
    check_fraction("val_fraction", val_fraction)
    root = os.path.expanduser(root)
    plain = transforms.ToTensor()
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()]) if augment else plain
    try:
        train_aug = cls(root, train=True, transform=train_tf, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"{cls.__mro__[2].__name__} not found under {root!r} ({err}); put torchvision's "
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


