"""Figures saved as PNG (matplotlib, headless Agg). Plain drawing functions: no MLflow, no Ray,
and no knowledge of evaluation modes: ``distfair.evaluation.seed_figures`` and the evaluation
summaries decide which figures a seed run gets and call these.

Sy-FAR figure styles: per-class robust accuracy bars (Fig. 1), asymmetry heatmap (Fig. 4),
confusion heatmap (Fig. 5), per-group bars (Fig. 7). Counts follow ``fairness_metrics``:
``counts[i, j]`` = samples of true class i predicted as j; ``R`` is row-normalised and a
class is absent when its row sum is 0 (its row of ``R`` stays zero). The plots do not warn
about absent classes: the metrics computed from the same matrix already do.

Abstentions (a predictor that can abstain): ``abstained[i]`` counts the samples of true class
i the predictor abstained on; they are in no cell of ``counts`` and never in class 0's
column. Rates then divide by the class totals including them (as ``fairness_metrics``), and
the confusion heatmap draws them as an extra "abstained" column.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
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


def _rates(counts, abstained=None) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised matrix R (absent rows zero) and presence mask of a validated count
    matrix (errors as ``fairness_metrics``); no warning about absent classes. With
    ``abstained`` rows divide by the class totals including the abstentions."""
    from distfair.metrics._fairness import count_matrix

    matrix, abst = count_matrix(counts, abstained)
    rows = matrix.sum(axis=1) + abst
    present = rows > 0
    rates = np.divide(matrix, rows[:, None], out=np.zeros_like(matrix), where=present[:, None])
    return rates, present


def confusion_rates(counts, abstained=None) -> np.ndarray:
    """What ``confusion_heatmap`` draws: K x K fractions of each true class (rows) predicted
    as each class; with ``abstained`` K x (K+1), the last column the fraction abstained on,
    every row over the class total including the abstentions (rows sum to 1, absent rows 0)."""
    counts = np.asarray(counts, dtype=float)
    if abstained is not None:
        counts = np.concatenate([counts, np.asarray(abstained, dtype=float).reshape(-1, 1)], axis=1)
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def confusion_heatmap(counts, class_names: list[str], title: str, path: str | Path, *,
                      abstained=None) -> Path:
    """Row-normalised confusion matrix (Sy-FAR Fig. 5 style): rows true, columns predicted,
    each cell annotated with its rate (K <= 20), a colour bar, class names on both axes.
    ``abstained`` (K,) abstentions per true class: drawn as a last "abstained" column
    (``confusion_rates``), never folded into a class."""
    rates = confusion_rates(counts, abstained)
    return _heatmap(rates, class_names, title, path, cmap="Blues", vmin=0.0, vmax=1.0,
                    cbar_label="fraction of true class", xlabel="predicted class",
                    ylabel="true class", extra_column=None if abstained is None else "abstained")


def asymmetry_matrix(counts, abstained=None) -> np.ndarray:
    """``|R_ij - R_ji|`` on the strict upper triangle (i < j), NaN on and below the diagonal
    and for every pair involving an absent class. Its nanmax is ``max_asym_gap`` (when at
    least two classes are present; with the same ``abstained`` as the metrics)."""
    rates, present = _rates(counts, abstained)
    k = rates.shape[0]
    keep = np.triu(np.ones((k, k), dtype=bool), 1) & present[:, None] & present[None, :]
    return np.where(keep, np.abs(rates - rates.T), np.nan)


def asymmetry_heatmap(counts, class_names: list[str], title: str, path: str | Path, *,
                      vmax: float | None = None, abstained=None) -> Path:
    """Upper-triangle asymmetry gaps (Sy-FAR Fig. 4 style); NaN cells blank. The colour
    scale runs from 0 to ``vmax`` (default: the largest gap); pass the same ``vmax`` to
    compare heatmaps side by side."""
    values = asymmetry_matrix(counts, abstained)
    if vmax is None:
        finite = values[np.isfinite(values)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return _heatmap(values, class_names, title, path, cmap="Reds", vmin=0.0, vmax=vmax,
                    cbar_label="|C_ij − C_ji|", xlabel="class j", ylabel="class i")


def target_shares(counts, abstained=None) -> np.ndarray | None:
    """Target confusion shares ``T_j = sum_{i!=j} R_ij / sum_i sum_{k!=i} R_ik`` for every
    column j (Sy-FAR §5, as ``tgt_max``/``tgt_min``/``tgt_std``; absent classes can still be
    targets); ``None`` when there are no misclassifications. Abstentions are no target."""
    rates, _ = _rates(counts, abstained)
    off_diag = rates - np.diag(np.diag(rates))
    total = off_diag.sum()
    return off_diag.sum(axis=0) / total if total > 0 else None


def _bar_width(k: int, n_series: int) -> float:
    return min(16.0, max(6.0, 1.0 + k * (0.25 * n_series + 0.2)))


def target_share_bars(counts, class_names: list[str], title: str, path: str | Path, *, abstained=None) -> Path:
    """Bars of T_j per target class with a dashed line at the uniform share 1/K; without
    misclassifications the figure says so in text instead."""
    plt = _pyplot()
    shares = target_shares(counts, abstained)
    k = 2 if shares is None else len(shares)
    fig, ax = plt.subplots(figsize=(_bar_width(k, 1), 4.5))
    ax.set_title(title)
    if shares is None:
        ax.text(0.5, 0.5, "no misclassifications:\ntarget shares are undefined",
                ha="center", va="center", fontsize=12, transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    ax.bar(np.arange(k), shares, 0.7, color="C3")
    ax.axhline(1.0 / k, color="black", linestyle="--", linewidth=1, label=f"uniform 1/K = {1 / k:.3g}")
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 1.15 * max(shares.max(), 1.0 / k))
    _set_class_ticks(ax, class_names, k, y=False)
    ax.set_xlabel("target (predicted) class")
    ax.set_ylabel("share of misclassifications T_j")
    ax.legend(fontsize=8)
    return _save(fig, path)


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


def target_success_heatmap(matrix, class_names: list[str], title: str, path: str | Path) -> Path:
    """K x K targeted success rates, rows true class, columns target class; the diagonal
    (and any NaN, e.g. an untested pair) is blank."""
    values = np.array(matrix, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix: must be a square 2-D matrix, got shape {values.shape}")
    np.fill_diagonal(values, np.nan)
    return _heatmap(values, class_names, title, path, cmap="Oranges", vmin=0.0, vmax=1.0,
                    cbar_label="targeted success rate", xlabel="target class", ylabel="true class")


def file_safe(name: str) -> str:
    """``name`` usable in a file name (letters, digits, ``-_.``; anything else ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


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


# ------------------------------------------------------------ across seeds (distfair report)
def _error_bar_groups(ax, series: dict[str, list], k: int) -> None:
    """One group of bars per x position, one bar per series with its seed std as error bar;
    ``series`` maps a name to K ``(mean, std)`` pairs (std None: no bar; the pair None: no
    value, drawn as "n/a")."""
    n = max(1, len(series))
    width = 0.8 / n
    for s, (name, values) in enumerate(series.items()):
        xs = np.arange(k) - 0.4 + width * (s + 0.5)
        have = [i for i, v in enumerate(values) if v is not None and v[0] is not None]
        means = [float(values[i][0]) for i in have]
        errs = [0.0 if values[i][1] is None else float(values[i][1]) for i in have]
        ax.bar(xs[have], means, width, yerr=errs, capsize=min(4.0, 24.0 / max(k * n, 1)), color=f"C{s % 10}",
               label=name, error_kw={"elinewidth": 1, "ecolor": "0.2"})
        for i in sorted(set(range(k)) - set(have)):
            ax.text(xs[i], 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="0.3")
    ax.set_xlim(-0.6, k - 0.4)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def seed_error_bars(series: dict[str, list], x_labels: list[str], title: str, path: str | Path, *,
                    xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Grouped bars of seed means with ± one seed std as error bars (Sy-FAR Fig. 1 and 7
    styles, across seeds): one group per x label (a class, a group), one bar per series (a
    configuration); ``series`` maps its name to one ``(mean, std)`` (or None) per x label."""
    plt = _pyplot()
    k = len(x_labels)
    _check_series(series, k, "series")
    fig, ax = plt.subplots(figsize=(_bar_width(k, len(series)), 4.5))
    _error_bar_groups(ax, series, k)
    _set_class_ticks(ax, x_labels, k, y=False)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def stability_bars(stds: dict[str, dict[str, float | None]], title: str, path: str | Path, *,
                   ylabel: str = "std across seeds") -> Path:
    """The spread of each configuration (Sy-FAR App. C Figs. 8-10): one group of bars per
    metric (``stds`` maps a metric to ``{configuration: sample std across seeds}``), one bar per
    configuration; a None std (fewer than two seeds) is drawn as "n/a"."""
    plt = _pyplot()
    if not stds:
        raise ValueError("stds: need at least one metric, got none")
    metrics = list(stds)
    names = list(dict.fromkeys(c for per in stds.values() for c in per))
    series = {c: [stds[m].get(c) for m in metrics] for c in names}
    fig, ax = plt.subplots(figsize=(_bar_width(len(metrics), len(names)), 4.5))
    _grouped_bars(ax, series, len(metrics), annotate=False)
    ax.set_xticks(range(len(metrics)), metrics, rotation=30 if len(metrics) > 3 else 0,
                  ha="right" if len(metrics) > 3 else "center")
    top = max([v for per in series.values() for v in per if v is not None] or [0.0])
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


#: markers cycled over seeds (with the colours), so a seed is told apart without colour too
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _seed_styles(plt, seeds: list) -> dict:
    """seed -> (colour, marker): tab10 / tab20 keep neighbouring seeds apart, beyond 20 seeds
    a sequential map still orders them; markers cycle through :data:`SEED_MARKERS`."""
    cmap = plt.get_cmap("tab10" if len(seeds) <= 10 else "tab20" if len(seeds) <= 20 else "viridis")
    return {s: (cmap(i if len(seeds) <= 20 else i / max(len(seeds) - 1, 1)), SEED_MARKERS[i % len(SEED_MARKERS)])
            for i, s in enumerate(seeds)}


def seed_strips(panels: dict[str, dict[str, dict[int, float] | list[float]]], title: str, path: str | Path, *,
                columns: int = 3) -> Path:
    """One panel per metric (``panels`` maps a metric to ``{configuration: {seed: value}}``; a
    list of values is numbered 0, 1, ... as seeds): every seed a point in its own colour and
    marker, the same in every configuration and panel (the figure's legend names the seeds),
    at a fixed sideways offset per seed, and a thin line of its colour joining its points
    across neighbouring configurations; the mean as a bar and ± one sample std as a line
    beside the points."""
    plt = _pyplot()
    if not panels:
        raise ValueError("panels: need at least one metric, got none")
    panels = {metric: {name: dict(v) if isinstance(v, Mapping) else dict(enumerate(v or [])) for name, v in per.items()}
              for metric, per in panels.items()}
    n = len(panels)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    names = list(dict.fromkeys(c for per in panels.values() for c in per))
    seeds = sorted({s for per in panels.values() for values in per.values() for s in values})
    style = _seed_styles(plt, seeds)
    offset = {s: (np.linspace(-0.2, 0.2, len(seeds))[i] if len(seeds) > 1 else 0.0) for i, s in enumerate(seeds)}
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 0.5 * len(names) + 2.5) * cols, 3.4 * rows + 0.4),
                             squeeze=False)
    for ax, (metric, per) in zip(axes.flat, panels.items()):
        for seed in seeds:
            points = [(i + offset[seed], per[name][seed]) for i, name in enumerate(names)
                      if seed in per.get(name, {})]
            if len(points) > 1:
                ax.plot(*zip(*points), "-", color=style[seed][0], alpha=0.35, linewidth=0.8, zorder=1)
        for i, name in enumerate(names):
            by_seed = per.get(name) or {}
            values = np.asarray([by_seed[s] for s in sorted(by_seed)], dtype=float)
            if not values.size:
                ax.text(i, 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.3",
                        transform=ax.get_xaxis_transform())
                continue
            for seed, value in sorted(by_seed.items()):
                colour, marker = style[seed]
                ax.plot([i + offset[seed]], [value], marker, color=colour, markeredgecolor="0.2", alpha=0.85,
                        markersize=5, zorder=2)
            mean = float(values.mean())
            ax.hlines(mean, i - 0.3, i + 0.3, color="black", linewidth=1.5)
            if values.size > 1:
                std = float(values.std(ddof=1))
                ax.vlines(i + 0.3, mean - std, mean + std, color="black", linewidth=1.2)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(metric, fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    handles = [plt.Line2D([], [], marker=style[s][1], linestyle="-", linewidth=0.8, color=style[s][0],
                          markeredgecolor="0.2", label=str(s)) for s in seeds]
    if handles:
        fig.legend(handles=handles, title="seed", loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
                   ncol=math.ceil(len(seeds) / 20))
    fig.suptitle(title)
    return _save(fig, path)


def pareto_whiskers(points: list[dict], title: str, path: str | Path, *, xlabel: str, ylabel: str) -> Path:
    """Configurations of a two-objective search with their seed intervals: each point
    ``{"name", "x", "y", "x_interval": (low, high) | None, "y_interval": ..., "front": bool,
    "chosen": bool}`` drawn with whiskers over its intervals; the Pareto set in colour and
    joined by a line, the chosen point ringed, every point named."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for p in points:
        colour = "C3" if p.get("front") else "0.55"
        xerr = None if p.get("x_interval") is None else [[p["x"] - p["x_interval"][0]], [p["x_interval"][1] - p["x"]]]
        yerr = None if p.get("y_interval") is None else [[p["y"] - p["y_interval"][0]], [p["y_interval"][1] - p["y"]]]
        ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt="o", color=colour, ecolor=colour, elinewidth=1,
                    capsize=3, alpha=0.9)
        if p.get("chosen"):
            ax.plot([p["x"]], [p["y"]], "o", markersize=14, markerfacecolor="none", markeredgecolor="black")
        ax.annotate(str(p["name"]), (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted((p for p in points if p.get("front")), key=lambda p: p["x"])
    if len(front) > 1:
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "-", color="C3", linewidth=1, alpha=0.6)
    ax.plot([], [], "o", color="C3", label="Pareto set")
    ax.plot([], [], "o", color="0.55", label="dominated")
    ax.plot([], [], "o", markersize=10, markerfacecolor="none", markeredgecolor="black", label="chosen")
    ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def mean_rates_heatmap(rates, class_names: list[str], title: str, path: str | Path, *, n_seeds: int,
                       abstained_column: bool = False) -> Path:
    """A confusion matrix averaged over seeds: ``rates`` is the mean over seeds of
    ``confusion_rates`` (K x K, or K x (K+1) with the abstained column), drawn as
    ``confusion_heatmap`` draws one seed's."""
    values = np.asarray(rates, dtype=float)
    return _heatmap(values, class_names, title, path, cmap="Blues", vmin=0.0, vmax=1.0,
                    cbar_label=f"fraction of true class (mean of {n_seeds} seeds)", xlabel="predicted class",
                    ylabel="true class", extra_column="abstained" if abstained_column else None)


def mean_asymmetry_heatmap(values, class_names: list[str], title: str, path: str | Path, *, n_seeds: int,
                           vmax: float | None = None) -> Path:
    """Pairwise asymmetry gaps averaged over seeds (the mean of each seed's
    ``asymmetry_matrix``; NaN cells blank), drawn as ``asymmetry_heatmap``."""
    values = np.asarray(values, dtype=float)
    if vmax is None:
        finite = values[np.isfinite(values)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return _heatmap(values, class_names, title, path, cmap="Reds", vmin=0.0, vmax=vmax,
                    cbar_label=f"|C_ij − C_ji| (mean of {n_seeds} seeds)", xlabel="class j", ylabel="class i")


# --------------------------------------------------- one configuration's seeds (its MLflow run)
def seed_stability(values: dict[str, dict[int, float]], stats: dict[str, dict], title: str, path: str | Path, *,
                   columns: int = 3) -> Path:
    """How much one configuration moves with the seed: one panel per metric (``values`` maps a
    metric to ``{seed: value}``, ``stats`` maps it to ``distfair.metrics.summarize`` of those
    values). In each panel every seed is a point in its own colour (the figure's legend names
    the seeds), then the mean with ± one sample std (ddof = 1) and the 95% Student-t interval
    of the mean as error bars; with one seed the spread is "n/a"."""
    plt = _pyplot()
    if not values:
        raise ValueError("values: need at least one metric, got none")
    missing = [m for m in values if m not in stats]
    if missing:
        raise ValueError(f"stats: no statistics for {', '.join(missing)}")
    seeds = sorted({s for per in values.values() for s in per})
    # tab10 / tab20 keep neighbouring seeds apart; beyond 20 seeds a sequential map still orders them
    cmap = plt.get_cmap("tab10" if len(seeds) <= 10 else "tab20" if len(seeds) <= 20 else "viridis")
    colour = {s: cmap(i if len(seeds) <= 20 else i / max(len(seeds) - 1, 1)) for i, s in enumerate(seeds)}
    offset = {s: (np.linspace(-0.25, 0.25, len(seeds))[i] if len(seeds) > 1 else 0.0) for i, s in enumerate(seeds)}
    n = len(values)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows + 0.6), squeeze=False)
    for ax, (metric, per) in zip(axes.flat, values.items()):
        s = stats[metric]
        for seed, value in sorted(per.items()):
            ax.plot([offset[seed]], [value], "o", color=colour[seed], markersize=6, markeredgecolor="0.2")
        if s.get("mean") is not None:
            ax.axhline(s["mean"], color="0.6", linestyle=":", linewidth=1)
            spread = None if s.get("std") is None else [[s["std"]], [s["std"]]]
            ax.errorbar([1], [s["mean"]], yerr=spread, fmt="D", color="black", capsize=4, markersize=5)
            if s.get("ci95_low") is not None:
                ax.errorbar([2], [s["mean"]], yerr=[[s["mean"] - s["ci95_low"]], [s["ci95_high"] - s["mean"]]],
                            fmt="s", color="C3", capsize=4, markersize=5)
        if s.get("std") is None:
            ax.text(1.5, 0.5, "n/a (one seed)", ha="center", va="center", fontsize=8, color="0.3",
                    transform=ax.get_xaxis_transform())
        ax.set_xticks([0, 1, 2], ["seeds", "mean ± std", "95% CI"], fontsize=8)
        ax.set_xlim(-0.5, 2.5)
        ax.set_title(f"{metric} (n = {s.get('n', len(per))})", fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colour[s], markeredgecolor="0.2", label=str(s))
               for s in seeds]
    fig.legend(handles=handles, title="seed", loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               ncol=math.ceil(len(seeds) / 20))
    fig.suptitle(title)
    return _save(fig, path)
