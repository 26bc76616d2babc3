"""Face recognition from a local folder of identity sub-folders (Sy-FAR §5: PubFig subsets).

Nothing is downloaded: ``root`` must already hold the (aligned, cropped) face images, one
folder per identity, ImageFolder style::

    root/
      metadata.csv              (optional, see below)
      Antonio_Banderas/0001.jpg
      Antonio_Banderas/0002.jpg
      Beyonce_Knowles/0001.jpg
      ...

Classes are the sorted identity folder names (``class_names``); images are the files in each
identity folder (not sub-folders) ending in .png/.jpg/.jpeg/.bmp/.ppm (any case); hidden
files and folders (leading ".") are ignored. The paper's PubFig set is ten celebrities (five
female, five male), ~300 images each; PubFig_SIB swaps two identities for two sisters. Sy-FAR
§5 "adopt[s] an 80/10/10 split for training, validation, and testing": the defaults here
(``val_fraction=0.1``, ``test_fraction=0.1``) give exactly that. Small sets need enough
images per identity for every part to be non-empty (10 per identity at 80/10/10). Images
load lazily (PIL -> RGB -> bilinear resize to ``image_size`` squared -> float C x H x W in
[0, 1]), so memory does not grow with the set.

``metadata`` is a CSV (relative to ``root`` or absolute; ``None``: no metadata; a named file
that is absent is an error) of one of two kinds, told apart by its columns (exactly one of
``identity`` / ``file``; every other column is an attribute, values kept as strings):

- class-level, ``identity,<attr>...`` (e.g. ``identity,gender``): one row per identity
  folder -> ``DataBundle.class_attributes``; rows for identities without a folder are
  ignored.
- per-sample, ``file,<attr>...`` with ``file`` relative to ``root`` (e.g. ``alice/001.png``):
  one row per image -> ``DataBundle.test_attributes`` for the test samples, in test order
  (and ``val_attributes`` / ``train_attributes`` for the validation and training samples);
  rows for files that are not used are ignored.
"""
from __future__ import annotations

import csv
import io
import os

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from distfair.data._base import DataBundle, check_fraction, read_text_file, stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
#: the largest ``image_size`` (pixels a side): 18 times ImageNet's 224
MAX_IMAGE_SIZE = 4096


class FaceImages(Dataset):
    """Images read from disk on access; ``paths``/``targets`` are all it holds."""

    def __init__(self, paths: list[str], targets: list[int], image_size: int):
        self.paths = list(paths)
        self.targets = list(targets)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                size = (self.image_size, self.image_size)
                img = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        except OSError as err:
            raise OSError(f"cannot read face image {path!r}: {err}") from err
        return pil_to_tensor(img).float().div_(255.0), self.targets[index]


def _is_image(entry: os.DirEntry) -> bool:
    return (not entry.name.startswith(".") and entry.is_file()
            and entry.name.lower().endswith(IMAGE_SUFFIXES))


def _scan(root: str, max_per_class: int | None) -> tuple[list[str], list[str], list[int]]:
    """(identities, image paths relative to root, labels)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"faces root {root!r} is not a directory (nothing is downloaded: "
                                f"put one folder of face images per identity there)")
    identities = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not identities:
        raise ValueError(f"no identity folders under faces root {root!r}; expected root/<identity>/<images>")
    if len(identities) < 2:
        raise ValueError(f"faces root {root!r} has only {len(identities)} identity folder "
                         f"({identities[0]!r}); need at least 2 classes")
    files, labels = [], []
    for label, identity in enumerate(identities):
        names = sorted(e.name for e in os.scandir(os.path.join(root, identity)) if _is_image(e))
        if not names:
            raise ValueError(f"identity folder {os.path.join(root, identity)!r} holds no images "
                             f"({'/'.join(IMAGE_SUFFIXES)})")
        if max_per_class is not None:
            names = names[:max_per_class]
        files += [f"{identity}/{n}" for n in names]
        labels += [label] * len(names)
    return identities, files, labels


def _read_csv(path: str) -> tuple[str, list[str], dict[str, dict[str, str]]]:
    """(key column, attribute columns, key -> {attribute: value}) of a metadata CSV."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"faces metadata file {path!r} not found (metadata=None for a set "
                                f"without metadata)")
    text = read_text_file(path, f"faces metadata {path!r}", encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [c.strip() for c in next(reader, [])]
    body = list(enumerate(reader, start=2))
    keys = [c for c in ("identity", "file") if c in header]
    if len(keys) != 1:
        raise ValueError(f"faces metadata {path!r} must have exactly one of the columns 'identity' "
                         f"(class-level) or 'file' (per-sample); its columns are {header}")
    key = keys[0]
    attrs = [c for c in header if c != key]
    if not attrs or "" in attrs or len(set(header)) != len(header):
        raise ValueError(f"faces metadata {path!r}: need distinct, non-empty attribute columns besides "
                         f"{key!r}; its columns are {header}")
    table: dict[str, dict[str, str]] = {}
    for line, row in body:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise ValueError(f"faces metadata {path!r}, row {line}: {len(row)} fields, expected "
                             f"{len(header)} ({', '.join(header)})")
        record = dict(zip(header, (cell.strip() for cell in row)))
        name = record.pop(key)
        if key == "file":
            name = os.path.normpath(name).replace(os.sep, "/")
        if name in table:
            raise ValueError(f"faces metadata {path!r}, row {line}: duplicate {key} {name!r}")
        table[name] = record
    return key, attrs, table


def faces(*, root: str, image_size: int = 224, metadata: str | None = "metadata.csv",
          val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
          max_per_class: int | None = None) -> DataBundle:
    """Identities under ``root`` (see the module docstring), split stratified by identity.

    ``test_fraction`` and ``val_fraction`` are fractions of the whole set (defaults: Sy-FAR
    §5's 80/10/10 train/validation/test); validation is carved from the non-test part, and
    the split depends only on the file list and ``split_seed``. ``max_per_class`` keeps the
    first images (sorted by name) of each identity.
    """
    check_fraction("test_fraction", test_fraction)
    check_fraction("val_fraction", val_fraction)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be <= {MAX_IMAGE_SIZE}, got {image_size}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    root = os.path.abspath(os.path.expanduser(root))
    identities, files, labels = _scan(root, max_per_class)
    test_idx, val_idx, train_idx = stratified_split(labels, [test_fraction, val_fraction], split_seed)
    for part, idx in (("test", test_idx), ("val", val_idx), ("train", train_idx)):
        if len(idx) == 0:
            raise ValueError(f"faces under {root!r}: the {part} split is empty ({len(files)} images, "
                             f"test_fraction={test_fraction}, val_fraction={val_fraction})")

    class_attributes: dict[str, list[str]] = {}
    test_attributes: dict[str, list[str]] = {}
    val_attributes: dict[str, list[str]] = {}
    train_attributes: dict[str, list[str]] = {}
    if metadata is not None:
        csv_path = os.path.join(root, os.path.expanduser(metadata))  # an absolute path stays as it is
        key, attrs, table = _read_csv(csv_path)
        if key == "identity":
            missing = [i for i in identities if i not in table]
            if missing:
                raise ValueError(f"faces metadata {csv_path!r} has no row for identity {missing[0]!r}"
                                 + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
            class_attributes = {a: [table[i][a] for i in identities] for a in attrs}
        else:
            missing = [f for f in files if f not in table]
            if missing:
                raise ValueError(f"faces metadata {csv_path!r} has no row for file {missing[0]!r}"
                                 + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
            test_attributes = {a: [table[files[i]][a] for i in test_idx] for a in attrs}
            val_attributes = {a: [table[files[i]][a] for i in val_idx] for a in attrs}
            train_attributes = {a: [table[files[i]][a] for i in train_idx] for a in attrs}

    def part(idx) -> FaceImages:
        return FaceImages([os.path.join(root, files[i]) for i in idx], [labels[i] for i in idx], image_size)

    return DataBundle(part(train_idx), part(val_idx), part(test_idx), num_classes=len(identities),
                      in_shape=(3, image_size, image_size), bounds=(0.0, 1.0), class_names=identities,
                      class_attributes=class_attributes, test_attributes=test_attributes,
                      val_attributes=val_attributes, train_attributes=train_attributes)
