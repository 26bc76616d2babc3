"""Accuracy figures of one run: per-class bars (Sy-FAR Fig. 1), per-group bars (Fig. 7),
accuracy curves over an attack budget (the speech paper's AUC_acc), and the labelled R x C
heatmap of the speech meta-analysis."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distfair.plotting.common import _bar_width, _check_series, _grouped_bars, _pyplot, _save, _set_class_ticks


def per_class_bars(per_class: dict[str, list[float | None]], class_names: list[str], title: str,
                   path: str | Path, *, ylabel: str = "per-class accuracy") -> Path:
    """Per-class accuracy bars (Sy-FAR Fig. 1 style): one group per class, one bar per
    evaluation (``{"clean": [...], "pgd20": [...]}``), y in [0, 1]; ``None`` (absent class)
    is drawn as "n/a". All lists have the length of the first; K = that length."""
    plt = _pyplot()
    k = len(next(iter(per_class.values()), []))
    _check_series(per_class, k, "per_class")
    fig, ax = plt.subplots(figsize=(_bar_width(k, len(per_class)), 4.5))
    _grouped_bars(ax, per_class, k, annotate=False)
    _set_class_ticks(ax, class_names, k, y=False)
    ax.set_ylim(0, 1)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def group_bars(groups: dict[str, dict[str, float]], title: str, path: str | Path, *,
               ylabel: str = "accuracy") -> Path:
    """Per-group bars (Sy-FAR Fig. 7 style): ``groups`` maps evaluation -> {group -> value}
    (e.g. ``group_metrics(...)["group_acc"]``); one group of bars per group name (in order of
    first appearance), one bar per evaluation, values written above the bars; a group
    missing from an evaluation is drawn as "n/a"."""
    plt = _pyplot()
    if not groups:
        raise ValueError("groups: need at least one evaluation, got none")
    names = list(dict.fromkeys(g for accs in groups.values() for g in accs))
    series = {ev: [accs.get(g) for g in names] for ev, accs in groups.items()}
    fig, ax = plt.subplots(figsize=(_bar_width(len(names), len(series)), 4.5))
    _grouped_bars(ax, series, len(names), annotate=len(names) * len(series) <= 40)
    _set_class_ticks(ax, names, len(names), y=False)
    ax.set_ylim(0, 1.1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("group")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)



def accuracy_curves(x: list[float], curves: dict[str, list[float | None]], title: str, path: str | Path, *,
                    xlabel: str = "attack budget ε", ylabel: str = "accuracy") -> Path:
    """Accuracy against a grid (e.g. the speech paper's AUC_acc, §3 Eq. 1): one line with
    markers per curve on a linear x axis, y in [0, 1]; a ``None`` point is left out."""
    plt = _pyplot()
    if not curves:
        raise ValueError("curves: need at least one curve, got none")
    for name, values in curves.items():
        if len(values) != len(x):
            raise ValueError(f"curves[{name!r}]: need {len(x)} values, got {len(values)}")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s, (name, values) in enumerate(curves.items()):
        have = [i for i, v in enumerate(values) if v is not None]
        ax.plot([x[i] for i in have], [values[i] for i in have], marker="o", color=f"C{s}", label=name)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def heatmap(values, row_labels: list[str], col_labels: list[str], title: str, path: str | Path, *,
            vmin: float, vmax: float, cmap: str = "RdBu_r", cbar_label: str = "", xlabel: str = "",
            ylabel: str = "", fmt: str = ".2f", column_split: int | None = None) -> Path:
    """A labelled R x C heatmap (e.g. correlations, speech paper 003 Figs. 2-5): rows and
    columns named, the value as colour between ``vmin`` and ``vmax``, every cell annotated with
    its value (``fmt``); a NaN cell (undefined) is blank and marked "n/a". ``column_split``:
    a vertical line before that column (e.g. binary interventions | levels)."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values: need shape ({len(row_labels)}, {len(col_labels)}) for the labels, "
                         f"got {values.shape}")
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(min(14.0, 2.5 + 1.1 * cols), min(12.0, 1.8 + 0.55 * rows)))
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    ax.set_xticks(range(cols), [str(c) for c in col_labels])
    ax.set_yticks(range(rows), [str(r) for r in row_labels])
    if column_split is not None:
        ax.axvline(column_split - 0.5, color="black", linewidth=1.5)
    span = vmax - vmin
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            if np.isfinite(v):
                strong = span > 0 and abs(v - (vmin + vmax) / 2) > 0.3 * span
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=9,
                        color="white" if strong else "black")
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)

