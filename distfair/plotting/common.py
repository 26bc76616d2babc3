"""What every figure shares: headless pyplot, class-axis ticks, figure sizes, saving, grouped
bars with "n/a" marks, the K x K class heatmap, and ``file_safe`` for figure file names."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_MAX_TICKS = 40       # beyond this many classes only every ceil(K / 40)-th label is drawn
_ANNOTATE_MAX_K = 20  # heatmap cells carry their value up to this K
_DPI = 110


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _tick_labels(class_names, k: int) -> tuple[list[int], list[str], int]:
    """(positions, labels, rotation in degrees) of the class-axis ticks. Names fall back to
    ``"0".."K-1"`` unless there are exactly K; every ``ceil(K / 40)``-th class is labelled;
    labels are rotated 45° (up to 20 labels) or 90° once they would not fit side by side."""
    if class_names is not None and len(class_names) == k:
        names = [str(n) for n in class_names]
    else:
        names = [str(i) for i in range(k)]
    positions = list(range(0, k, math.ceil(k / _MAX_TICKS)))
    labels = [names[i] for i in positions]
    width = len(labels) * max(len(s) for s in labels)
    rotation = 0 if width <= 40 else 45 if len(labels) <= 20 else 90
    return positions, labels, rotation


def _set_class_ticks(ax, class_names, k: int, *, y: bool) -> None:
    positions, labels, rotation = _tick_labels(class_names, k)
    style = {"rotation": rotation}
    if rotation == 45:
        style.update(ha="right", rotation_mode="anchor")
    ax.set_xticks(positions, labels, **style)
    if y:
        ax.set_yticks(positions, labels)


def _square_size(k: int) -> float:
    return min(14.0, max(4.0, 0.45 * k + 2))


def _save(fig, path) -> Path:
    plt = _pyplot()
    path = Path(path)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _heatmap(values: np.ndarray, class_names, title: str, path, *, cmap: str, vmin: float,
             vmax: float, cbar_label: str, xlabel: str, ylabel: str, extra_column: str | None = None) -> Path:
    """K x K heatmap with class names on both axes, a colour bar, NaN cells blank and
    the cell values written in when K <= 20. ``extra_column``: ``values`` is K x (K+1) and
    its last column is labelled so (e.g. "abstained")."""
    plt = _pyplot()
    k = values.shape[0]
    size = _square_size(k)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    _set_class_ticks(ax, class_names, k, y=True)
    if extra_column is not None:
        positions, labels, _ = _tick_labels(class_names, k)
        ax.set_xticks(positions + [k], labels + [extra_column], rotation=90)
        ax.axvline(k - 0.5, color="black", linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if k <= _ANNOTATE_MAX_K:
        dark = vmin + 0.5 * (vmax - vmin)
        for i, j in zip(*np.nonzero(np.isfinite(values))):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                    fontsize=7 if k > 10 else 8, color="white" if values[i, j] > dark else "black")
    return _save(fig, path)



def _bar_width(k: int, n_series: int) -> float:
    return min(16.0, max(6.0, 1.0 + k * (0.25 * n_series + 0.2)))



def _grouped_bars(ax, series: dict[str, list], k: int, *, annotate: bool) -> None:
    """One group of bars per x position, one bar per series (colour Cs, legend label the
    series name); a ``None`` value gets no bar and an "n/a" mark instead."""
    n = len(series)
    width = 0.8 / n
    for s, (name, values) in enumerate(series.items()):
        xs = np.arange(k) - 0.4 + width * (s + 0.5)
        have = [i for i, v in enumerate(values) if v is not None]
        heights = [float(values[i]) for i in have]
        ax.bar(xs[have], heights, width, color=f"C{s}", label=name)
        for i in sorted(set(range(k)) - set(have)):
            ax.text(xs[i], 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="0.3")
        if annotate:
            for i, h in zip(have, heights):
                ax.text(xs[i], h + 0.01, f"{h:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.6, k - 0.4)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _check_series(series: dict, k: int, what: str) -> None:
    if not series:
        raise ValueError(f"{what}: need at least one evaluation, got none")
    for name, values in series.items():
        if len(values) != k:
            raise ValueError(f"{what}[{name!r}]: need {k} values, got {len(values)}")



def file_safe(name: str) -> str:
    """``name`` usable in a file name (letters, digits, ``-_.``; anything else ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))

