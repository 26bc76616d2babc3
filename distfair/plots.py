"""Figures saved as PNG (matplotlib, headless). Plain functions: no MLflow, no Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_heatmap(counts, class_names: list[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix (Sy-FAR Fig. 5 style): rows true, columns predicted,
    each cell annotated with its rate, a colour bar, class names on both axes."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(counts)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    names = class_names if len(class_names) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
