"""Datasets: sizes, disjoint stratified splits, determinism, ranges; MNIST-1D offline; CIFAR
from small stand-ins written in torchvision's on-disk layout."""
import importlib
import pickle
import random

import numpy as np
import pytest
import torch

from distfair.data import DATASETS, DataBundle, build_dataset, stratified_split


def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of a dataset, stacked."""
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.as_tensor(ys)


def rows(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One row per sample (pixels then label), for multiset comparisons."""
    return np.concatenate([x.flatten(1).double().numpy(), y.double().numpy()[:, None]], axis=1)


def row_counts(table: np.ndarray) -> dict:
    uniq, counts = np.unique(table, axis=0, return_counts=True)
    return {tuple(r): c for r, c in zip(uniq, counts)}


def test_registry_and_build_dataset():
    assert set(DATASETS) >= {"digits", "mnist1d", "cifar10", "cifar100", "synthetic"}
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_dataset("nope")


# -------------------------------------------------------------------- stratified_split
def test_stratified_split_by_hand():
    # class 0: 10 samples, class 1: 20, class 2: 4 (indices interleaved)
    labels = [0] * 10 + [1] * 20 + [2] * 4
    labels = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    labels_arr = np.asarray(labels)
    a, b, rest = stratified_split(labels, [0.2, 0.5], seed=3)
    # per class: cuts at round(0.2 n) and round(0.7 n)
    expected = {0: (2, 5, 3), 1: (4, 10, 6), 2: (1, 2, 1)}  # round(0.8)=1, round(2.8)=3
    for cls, (na, nb, nr) in expected.items():
        assert (labels_arr[a] == cls).sum() == na
        assert (labels_arr[b] == cls).sum() == nb
        assert (labels_arr[rest] == cls).sum() == nr
    everything = np.concatenate([a, b, rest])
    assert sorted(everything.tolist()) == list(range(len(labels)))  # a partition
    for part in (a, b, rest):
        assert part.dtype.kind == "i" and np.all(np.diff(part) > 0)  # sorted, no repeats
    again = stratified_split(labels, [0.2, 0.5], seed=3)
    assert all(np.array_equal(p, q) for p, q in zip((a, b, rest), again))
    other = stratified_split(labels, [0.2, 0.5], seed=4)
    assert not all(np.array_equal(p, q) for p, q in zip((a, b, rest), other))


def test_stratified_split_rejects_fractions_summing_to_one():
    with pytest.raises(ValueError, match="sum to < 1"):
        stratified_split([0, 1, 0, 1], [0.5, 0.5], seed=0)


# ------------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits_bundle() -> DataBundle:
    return build_dataset("digits", split_seed=0)


def test_digits_sizes_shapes_range(digits_bundle):
    b = digits_bundle
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert b.num_classes == 10 and b.in_shape == (1, 8, 8) and b.bounds == (0.0, 1.0)
    assert b.class_names == [str(i) for i in range(10)]
    for ds in (b.train, b.val, b.test):
        x, y = tensors(ds)
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert y.dtype == torch.long


def test_digits_splits_partition_the_set(digits_bundle):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = rows(torch.tensor(bunch.images / 16.0, dtype=torch.float32), torch.tensor(bunch.target))
    parts = [rows(*tensors(ds)) for ds in (digits_bundle.train, digits_bundle.val, digits_bundle.test)]
    # as multisets, train + val + test is exactly the data set: nothing shared, nothing lost
    assert row_counts(np.concatenate(parts)) == row_counts(full)


def test_digits_splits_disjoint_by_index(monkeypatch):
    # the package attribute `distfair.data.digits` is the function; fetch the module itself
    digits_module = importlib.import_module("distfair.data.digits")
    seen = []

    def spy(labels, fractions, seed):
        out = stratified_split(labels, fractions, seed)
        seen.append(out)
        return out

    monkeypatch.setattr(digits_module, "stratified_split", spy)
    build_dataset("digits", split_seed=0)
    (test_idx, val_idx, train_idx), = seen
    sets = [set(test_idx.tolist()), set(val_idx.tolist()), set(train_idx.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(range(1797))


@pytest.mark.parametrize("val_fraction,test_fraction", [(0.15, 0.2), (0.1, 0.3)])
def test_digits_stratified(val_fraction, test_fraction):
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target, minlength=10)
    b = build_dataset("digits", split_seed=1, val_fraction=val_fraction, test_fraction=test_fraction)
    counts = {name: np.bincount(tensors(ds)[1].numpy(), minlength=10)
              for name, ds in (("train", b.train), ("val", b.val), ("test", b.test))}
    for name in counts:
        assert (counts[name] > 0).all(), name  # every class in every split
    train_fraction = 1 - val_fraction - test_fraction
    for name, frac in (("test", test_fraction), ("val", val_fraction), ("train", train_fraction)):
        assert np.all(np.abs(counts[name] - frac * per_class) <= 1), (name, counts[name], frac * per_class)


def test_digits_deterministic_in_split_seed(digits_bundle):
    again = build_dataset("digits", split_seed=0)
    other = build_dataset("digits", split_seed=1)
    for part in ("train", "val", "test"):
        xa, ya = tensors(getattr(digits_bundle, part))
        xb, yb = tensors(getattr(again, part))
        assert torch.equal(xa, xb) and torch.equal(ya, yb), part
    xa, _ = tensors(digits_bundle.test)
    xc, _ = tensors(other.test)
    assert xa.shape == xc.shape and not torch.equal(xa, xc)


@pytest.mark.parametrize("option", ["val_fraction", "test_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1])
def test_digits_rejects_bad_fractions(option, value):
    with pytest.raises(ValueError, match=option):
        build_dataset("digits", **{option: value})


# ---------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_bounded():
    a = build_dataset("synthetic", num_samples=60, num_classes=3, dim=5, split_seed=2)
    b = build_dataset("synthetic", num_samples=60, num_classes=3, dim=5, split_seed=2)
    c = build_dataset("synthetic", num_samples=60, num_classes=3, dim=5, split_seed=3)
    assert a.in_shape == (5,) and a.num_classes == 3 and a.bounds == (0.0, 1.0)
    assert len(a.train) + len(a.val) + len(a.test) == 60
    for part in ("train", "val", "test"):
        xa, ya = tensors(getattr(a, part))
        xb, yb = tensors(getattr(b, part))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape[1:] == (5,)
        assert xa.min() >= a.bounds[0] and xa.max() <= a.bounds[1]
        assert set(ya.tolist()) == {0, 1, 2}
    assert not torch.equal(tensors(a.train)[0], tensors(c.train)[0])


@pytest.mark.parametrize("options,match", [({"num_classes": 1}, "num_classes"), ({"dim": 0}, "dim"),
                                           ({"num_samples": 10}, "num_samples"), ({"noise": -1.0}, "noise"),
                                           ({"val_fraction": 1.0}, "val_fraction")])
def test_synthetic_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("synthetic", **options)


# ------------------------------------------------------------------------------ mnist1d
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import socket
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    try:
        import requests
    except ImportError:
        pass
    else:
        monkeypatch.setattr(requests, "get", refuse)


def test_mnist1d_offline(no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl: make sure nothing is
    b = build_dataset("mnist1d", num_samples=500, split_seed=0)
    assert list(tmp_path.iterdir()) == []
    assert b.num_classes == 10 and b.in_shape == (1, 40)
    assert len(b.train) + len(b.val) + len(b.test) == 500
    parts = [tensors(ds) for ds in (b.train, b.val, b.test)]
    xs = torch.cat([x for x, _ in parts])
    ys = torch.cat([y for _, y in parts])
    assert xs.shape[1:] == (1, 40) and xs.dtype == torch.float32
    assert set(ys.tolist()) == set(range(10))
    train_val = torch.cat([parts[0][0], parts[1][0]])
    assert b.bounds == (float(train_val.min()), float(train_val.max()))  # training data only
    again = build_dataset("mnist1d", num_samples=500, split_seed=0)
    assert torch.equal(tensors(again.val)[0], parts[1][0])


def test_mnist1d_bounds_come_from_training_data_only():
    """The attack range is the [min, max] of MNIST-1D's training portion (train + val here);
    with this seed the test set holds a lower value, which must not widen the range."""
    b = build_dataset("mnist1d", num_samples=200, generator_seed=1)
    seen = torch.cat([tensors(b.train)[0], tensors(b.val)[0]])
    test_x = tensors(b.test)[0]
    assert b.bounds == (float(seen.min()), float(seen.max()))
    assert test_x.min() < b.bounds[0]  # the case that makes the check bite


def test_mnist1d_leaves_global_rngs_alone():
    """mnist1d reseeds ``random`` and NumPy internally; building it must not undo a run's seeding."""
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    build_dataset("mnist1d", num_samples=100)
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_rejects_small_sets():
    with pytest.raises(ValueError, match="num_samples"):
        build_dataset("mnist1d", num_samples=50)


# -------------------------------------------------------------------------------- CIFAR
def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def trust_standins(monkeypatch, cls, folder) -> None:
    """Register the MD5s of the stand-in files under ``folder`` as ``cls``'s checksums (torchvision
    keeps the official ones in class attributes): the loader's integrity check then passes on
    exactly these files, and on no other content."""
    import hashlib

    from torchvision import datasets

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    base = getattr(datasets, cls)
    monkeypatch.setattr(base, "train_list", [[n, md5(n)] for n, _ in base.train_list])
    monkeypatch.setattr(base, "test_list", [[n, md5(n)] for n, _ in base.test_list])
    monkeypatch.setattr(base, "meta", {**base.meta, "md5": md5(base.meta["filename"])})


def write_cifar10(root, monkeypatch, per_batch: int = 20, n_test: int = 30):
    """torchvision's cifar-10-batches-py layout: data_batch_1..5, test_batch, batches.meta,
    their checksums registered for this test (:func:`trust_standins`)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        data = _images(per_batch, i)
        labels = [j % 10 for j in range(per_batch)]
        _dump(folder / f"data_batch_{i}", {"data": data, "labels": labels})
        train.append((data, labels))
    test = _images(n_test, 0)
    test_labels = [j % 10 for j in range(n_test)]
    _dump(folder / "test_batch", {"data": test, "labels": test_labels})
    names = [f"class{c}" for c in range(10)]
    _dump(folder / "batches.meta", {"label_names": names})
    trust_standins(monkeypatch, "CIFAR10", folder)
    return train, (test, test_labels), names


def write_cifar100(root, monkeypatch, n_train: int = 500, n_test: int = 100):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = _images(n_train, 1)
    _dump(folder / "train", {"data": train, "fine_labels": [j % 100 for j in range(n_train)],
                             "coarse_labels": [j % 20 for j in range(n_train)]})
    test = _images(n_test, 2)
    test_labels = [j % 100 for j in range(n_test)]
    _dump(folder / "test", {"data": test, "fine_labels": test_labels, "coarse_labels": [0] * n_test})
    names = [f"fine{c}" for c in range(100)]
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [str(c) for c in range(20)]})
    trust_standins(monkeypatch, "CIFAR100", folder)
    return (test, test_labels), names


def check_images(ds, n_check: int = 5):
    for i in range(min(n_check, len(ds))):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert isinstance(y, int)


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    train, (test, test_labels), names = write_cifar10(tmp_path, monkeypatch)
    b = build_dataset("cifar10", root=str(tmp_path), split_seed=0, val_fraction=0.2)
    assert b.num_classes == 10 and b.in_shape == (3, 32, 32) and b.bounds == (0.0, 1.0)
    assert b.class_names == names
    assert (len(b.train), len(b.val), len(b.test)) == (80, 20, 30)  # 10 per class, 2 to validation
    for ds in (b.train, b.val, b.test):
        check_images(ds)
    # test and validation images are the stored pixels / 255, in CHW order
    x, y = b.test[3]
    assert y == test_labels[3]
    torch.testing.assert_close(x, torch.tensor(test[3].reshape(3, 32, 32), dtype=torch.float32) / 255)
    val_labels = [b.val[i][1] for i in range(len(b.val))]
    assert sorted(val_labels) == sorted(list(range(10)) * 2)
    # stratified, deterministic and disjoint by index
    again = build_dataset("cifar10", root=str(tmp_path), split_seed=0, val_fraction=0.2)
    assert b.val.indices == again.val.indices and b.train.indices == again.train.indices
    assert not set(b.val.indices) & set(b.train.indices)
    assert sorted(b.val.indices + b.train.indices) == list(range(100))


def test_cifar100_from_local_files(tmp_path, monkeypatch):
    (test, test_labels), names = write_cifar100(tmp_path, monkeypatch)
    b = build_dataset("cifar100", root=str(tmp_path), split_seed=0, val_fraction=0.2, augment=False)
    assert b.num_classes == 100 and b.in_shape == (3, 32, 32)
    assert b.class_names == names
    assert (len(b.train), len(b.val), len(b.test)) == (400, 100, 100)  # 5 per class, 1 to validation
    for ds in (b.train, b.val, b.test):
        check_images(ds)
    x, y = b.test[7]
    assert y == test_labels[7]
    torch.testing.assert_close(x, torch.tensor(test[7].reshape(3, 32, 32), dtype=torch.float32) / 255)


@pytest.mark.parametrize("tamper", ["replaced batch", "replaced meta", "official checksums"])
def test_cifar_files_that_fail_the_md5_check_are_refused_before_unpickling(tmp_path, monkeypatch, tamper):
    """Issue 28 §2: the batches are pickles; one replaced on shared storage (here a batch whose
    unpickling would run code, or the meta file) is refused by torchvision's MD5 check, never
    loaded; so are the stand-ins under the official checksums."""
    import pickle

    if tamper == "official checksums":
        folder = tmp_path / "cifar-10-batches-py"
        write_cifar10(tmp_path, monkeypatch)
        monkeypatch.undo()                                 # torchvision's own checksums again
    else:
        write_cifar10(tmp_path, monkeypatch)
        folder = tmp_path / "cifar-10-batches-py"
        name = "data_batch_3" if tamper == "replaced batch" else "batches.meta"
        marker = tmp_path / "unpickled"

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))
        (folder / name).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="fails torchvision's MD5 check"):
        build_dataset("cifar10", root=str(tmp_path))
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_root(tmp_path, name, no_network):
    with pytest.raises(FileNotFoundError, match="download"):
        build_dataset(name, root=str(tmp_path / "nothing-here"))
