"""Figures across seeds: the report's comparisons of configurations (seed means with error
bars, stability bars, every-seed strips, the Pareto set with seed intervals, seed-mean
heatmaps) and one configuration's seed-stability figure for its MLflow run."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from distfair.plotting.common import (_bar_width, _check_series, _grouped_bars, _heatmap, _pyplot, _save,
                                     _set_class_ticks)


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
