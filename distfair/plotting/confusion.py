"""One evaluation's confusion-matrix figures (Sy-FAR Fig. 4 asymmetry heatmap, Fig. 5
confusion heatmap, the target shares of §5) and the targeted-success heatmap, with the
matrices they draw.

Counts follow ``fairness_metrics``:
``counts[i, j]`` = samples of true class i predicted as j; ``R`` is row-normalised and a
class is absent when its row sum is 0 (its row of ``R`` stays zero). The plots do not warn
about absent classes: the metrics computed from the same matrix already do.

Abstentions (a predictor that can abstain): ``abstained[i]`` counts the samples of true class
i the predictor abstained on; they are in no cell of ``counts`` and never in class 0's
column. Rates then divide by the class totals including them (as ``fairness_metrics``), and
the confusion heatmap draws them as an extra "abstained" column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distfair.plotting.common import _bar_width, _heatmap, _pyplot, _save, _set_class_ticks


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



def target_success_heatmap(matrix, class_names: list[str], title: str, path: str | Path) -> Path:
    """K x K targeted success rates, rows true class, columns target class; the diagonal
    (and any NaN, e.g. an untested pair) is blank."""
    values = np.array(matrix, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix: must be a square 2-D matrix, got shape {values.shape}")
    np.fill_diagonal(values, np.nan)
    return _heatmap(values, class_names, title, path, cmap="Oranges", vmin=0.0, vmax=1.0,
                    cbar_label="targeted success rate", xlabel="target class", ylabel="true class")

