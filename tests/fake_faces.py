"""A tiny stand-in for a PubFig-style face set, written to disk for the ``faces`` loader.

Not a test module: import it from tests as ``from fake_faces import make_fake_faces``
(``tests/`` has no ``__init__.py``; pytest puts ``tests/`` on ``sys.path``, as for
``from test_attacks import ...``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def make_fake_faces(root, *, identities: Sequence[str] = ("alice", "bob", "carol", "dave"),
                    genders: Sequence[str] = ("F", "M", "F", "M"), per_identity: int = 6, size: int = 20,
                    per_sample: bool = False, seed: int = 0) -> Path:
    """Write ``root/<identity>/NNN.png`` (RGB, ``size`` x ``size``) and ``root/metadata.csv``.

    Each identity has its own base colour and a bright horizontal band at its own height, plus
    uniform noise (amplitude 0.1) drawn from ``seed``, so a small model separates the classes.
    Files are ``000.png``, ``001.png``, ...; the CSV is class-level ``identity,gender`` (one
    row per identity, in ``identities`` order) or, with ``per_sample``, ``file,gender`` (one
    row per image, ``file`` relative to ``root`` like ``alice/000.png``, gender of its
    identity). Returns ``Path(root)``.
    """
    if len(genders) != len(identities):
        raise ValueError(f"need one gender per identity, got {len(genders)} for {len(identities)}")
    if per_identity < 1 or size < 4:
        raise ValueError(f"per_identity must be >= 1 and size >= 4, got {per_identity}, {size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(identities)
    rows: list[tuple[str, str]] = []
    for c, (identity, gender) in enumerate(zip(identities, genders)):
        folder = root / identity
        folder.mkdir(exist_ok=True)
        hue = np.array([(c * 0.37) % 1.0, (c * 0.61 + 0.3) % 1.0, (c * 0.23 + 0.6) % 1.0])
        band = int(c * (size - 2) / max(k - 1, 1))
        for i in range(per_identity):
            img = 0.2 + 0.5 * hue[None, None, :] + rng.uniform(-0.1, 0.1, size=(size, size, 3))
            img[band:band + 2, :, :] = 0.95
            pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
            name = f"{i:03d}.png"
            Image.fromarray(pixels).save(folder / name)
            if per_sample:
                rows.append((f"{identity}/{name}", gender))
        if not per_sample:
            rows.append((identity, gender))
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("file" if per_sample else "identity", "gender"))
        writer.writerows(rows)
    return root
