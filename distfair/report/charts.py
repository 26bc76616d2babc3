"""The report's figures, drawn with ``distfair.plotting`` from the tables' seed values and the
seed runs' per-class accuracies, confusion matrices and subgroup metrics.

Every figure names configurations by their row key (C1, C2, ...; the report lists the
labels). Bar figures hold at most :data:`MAX_SERIES` configurations and the heatmaps at most
:data:`MAX_HEATMAPS` (the baseline and the validation-chosen rows first, then table order);
the report says which were left out.

* ``per_class_<evaluation>.png``: per-class accuracy under the primary evaluation attack, mean
  over seeds with ± one std (Sy-FAR Fig. 1 across seeds);
* ``stability.png``: each configuration's std across seeds per table column (Sy-FAR App. C
  Figs. 8-10);
* ``seed_strips.png``: every seed's value per configuration and column, with mean and std; a
  seed has the same colour and marker everywhere (legend) and a line joins its points across
  configurations;
* ``pareto_<sweep>.png``: a multi-objective sweep's configurations on its first two
  objectives, whiskers over the seed interval of each statistic (mean-based statistics: the
  95% t-interval of the mean, shifted as the statistic is; ``std``: its 95% χ² interval;
  others: the seeds' range), the Pareto set and the chosen configuration marked;
* ``confusion_<key>.png`` and ``asymmetry_<key>.png``: each configuration's confusion rates
  and pairwise asymmetry |C_ij − C_ji| (C the row-normalised confusion matrix, as for
  ``max_asym_gap``) under the primary evaluation, averaged over seeds; the asymmetry heatmaps
  of one report share one colour scale, 0 to the largest cell of any of them;
* ``groups_<family>_<attribute>.png``: per-group values (``group_acc`` under the primary
  evaluation and clean; for speech experiments ``group_auc_acc`` = AUC_acc and
  ``group_auc_fpr`` = AUC_FPR per group), mean ± std over seeds.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from distfair import plotting
from distfair.metrics import summarize
from distfair.results.names import metric_range, stat_name
from distfair.report.stats import std_interval
from distfair.report.tables import Row, Tables

MAX_SERIES = 10
MAX_HEATMAPS = 12
#: per-group families drawn as bars, with what they are and where their keys live
GROUP_FAMILIES = (("group_acc", "accuracy (primary evaluation)", "{primary}/group_acc/"),
                  ("clean_group_acc", "clean accuracy", "clean_group_acc/"),
                  ("group_auc_acc", "AUC_acc (speech paper 003 Eq. 1)", "group_auc_acc/"),
                  ("group_auc_fpr", "AUC_FPR (speech paper 003 Eq. 2)", "group_auc_fpr/"))


@dataclass
class Figure:
    name: str                  # file name under figures/
    title: str
    caption: str
    path: Path

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "caption": self.caption, "path": str(self.path)}


def _priority(tables: Tables, limit: int) -> tuple[list[Row], list[Row]]:
    """(rows drawn, rows left out): the baseline and validation-chosen rows first."""
    first = [r for r in tables.rows if r.baseline or r.chosen_by]
    ordered = first + [r for r in tables.rows if r not in first]
    drawn = ordered[:limit]
    return [r for r in tables.rows if r in drawn], [r for r in tables.rows if r not in drawn]


def _left_out(rows: Sequence[Row]) -> str:
    return f" Left out (more than the figure holds): {', '.join(r.key for r in rows)}." if rows else ""


def _mean_std(values: Sequence[float]) -> tuple[float, float | None] | None:
    s = summarize(list(values))
    return None if not s["n"] else (s["mean"], s["std"])


def per_class_figure(tables: Tables, outdir: Path) -> list[Figure]:
    evaluation = tables.primary_evaluation
    if evaluation is None:
        return []
    rows, left = _priority(tables, MAX_SERIES)
    series, names = {}, None
    for row in rows:
        per_seed = [s.per_class_acc.get(evaluation) for s in row.configuration.seeds if s.per_class_acc.get(evaluation)]
        if not per_seed:
            continue
        k = len(per_seed[0])
        if names is None:
            seed = next(s for s in row.configuration.seeds if s.per_class_acc.get(evaluation))
            names = seed.class_names if seed.class_names and len(seed.class_names) == k else [str(i) for i in range(k)]
        if k != len(names):
            continue
        series[row.key] = [_mean_std([p[i] for p in per_seed if len(p) == k and p[i] is not None]) for i in range(k)]
    if not series:
        return []
    name = f"per_class_{plotting.file_safe(evaluation)}.png"
    path = plotting.seed_error_bars(series, names, f"Per-class accuracy under {evaluation} (mean ± std over seeds)",
                                 outdir / name, xlabel="class", ylabel="per-class accuracy")
    return [Figure(name, f"Per-class accuracy under {evaluation}",
                   "Mean over each configuration's seeds, error bars ± one sample std (Sy-FAR Fig. 1, across seeds)."
                   + _left_out(left), path)]


def stability_figure(tables: Tables, outdir: Path) -> list[Figure]:
    rows, left = _priority(tables, MAX_SERIES)
    stds = {col.name: {r.key: r.cells[col.name].std for r in rows} for col in tables.columns}
    if not any(v is not None for per in stds.values() for v in per.values()):
        return []
    path = plotting.stability_bars(stds, "Stability: std across seeds per configuration", outdir / "stability.png")
    return [Figure("stability.png", "Stability across seeds",
                   "Sample standard deviation (ddof = 1) of each table column over each configuration's seeds "
                   "(Sy-FAR App. C); lower is more stable. n/a: fewer than two seeds." + _left_out(left), path)]


def strips_figure(tables: Tables, outdir: Path) -> list[Figure]:
    panels = {col.name: {r.key: dict(sorted(r.cells[col.name].values.items())) for r in tables.rows}
              for col in tables.columns}
    if not any(v for per in panels.values() for v in per.values()):
        return []
    path = plotting.seed_strips(panels, "Every seed per configuration", outdir / "seed_strips.png")
    return [Figure("seed_strips.png", "Seeds per configuration",
                   "Each point one seed, in the seed's own colour and marker in every configuration and panel "
                   "(legend: seed), set beside the others at the same place in every configuration; a thin line "
                   "joins a seed's points across configurations (the seed fixes initialisation, data order and "
                   "attack starts). Black bar the mean, vertical line ± one sample std.", path)]


def _objective_point(metric_values: Sequence[float], stat: str, k: float,
                     metric: str | None = None) -> tuple[float, tuple | None] | None:
    """(the statistic, its seed interval) of one objective target over a configuration's seeds;
    the mean's interval is clipped to ``metric``'s range, as on the configuration run."""
    s = summarize(list(metric_values), bounds=metric_range(metric) if metric and stat == "mean" else None)
    if not s["n"]:
        return None
    if stat in ("mean", "mean_minus_std", "mean_plus_std"):
        shift = 0.0 if stat == "mean" else (-1.0 if stat == "mean_minus_std" else 1.0) * k * (s["std"] or 0.0)
        if stat != "mean" and s["std"] is None:
            return None
        interval = None if s["ci95_low"] is None else (s["ci95_low"] + shift, s["ci95_high"] + shift)
        return s["mean"] + shift, interval
    if stat == "std":
        return (None if s["std"] is None else (s["std"], std_interval(s["std"], s["n"])))
    if stat == "median":
        return float(np.median(s["values"])), (s["min"], s["max"])
    if stat in ("min", "max"):
        return s[stat], (s["min"], s["max"])
    return None


def pareto_figures(tables: Tables, outdir: Path) -> list[Figure]:
    out = []
    for sweep in tables.sweeps:
        if len(sweep.objective) < 2:
            continue
        targets = sweep.objective[:2]
        points = []
        for row in tables.rows:
            if row.configuration.tags.get("mlflow.parentRunId") != sweep.run_id:
                continue
            coords = []
            for t in targets:
                values = [s.metrics[t["metric"]] for s in row.configuration.seeds if t["metric"] in s.metrics]
                coords.append(_objective_point(values, t.get("stat", "mean"), float(t.get("k", 1.0)), t["metric"]))
            if any(c is None or c[0] is None for c in coords):
                continue
            points.append({"name": row.key, "x": coords[0][0], "y": coords[1][0], "x_interval": coords[0][1],
                           "y_interval": coords[1][1], "front": sweep.run_id in row.pareto_of,
                           "chosen": sweep.run_id in row.chosen_by})
        if not points:
            continue
        # the sweep's own name of a target (``Target.name``: ``<metric>_<stat>``, as MLflow names it)
        label = [f"{stat_name(t['metric'], t.get('stat', 'mean'))} ({t.get('mode', 'max')})" for t in targets]
        name = f"pareto_{sweep.run_id[:8]}.png"
        path = plotting.pareto_whiskers(points, f"Sweep {sweep.name}: Pareto set with seed intervals", outdir / name,
                                     xlabel=label[0], ylabel=label[1])
        out.append(Figure(name, f"Pareto set of sweep {sweep.name}",
                          "Each configuration at its objective statistics over seeds; whiskers: 95% t-interval of "
                          "the mean (shifted by the same k·std for mean ± k·std), the 95% χ² interval for std, the "
                          "seeds' range for min, max and median. Red: the Pareto set the sweep recorded; ringed: "
                          "the configuration it chose (on validation metrics).", path))
    return out


def _average_matrices(row: Row, evaluation: str) -> tuple[np.ndarray, np.ndarray, int, bool] | None:
    """(mean confusion rates, mean asymmetry matrix, seeds, abstained column) over the row's seeds."""
    rates, asym, with_abstained = [], [], False
    for seed in row.configuration.seeds:
        counts = seed.confusion.get(evaluation)
        if not counts:
            continue
        abstained = seed.abstained.get(evaluation)
        with_abstained = with_abstained or abstained is not None
        rates.append(plotting.confusion_rates(counts, abstained))
        asym.append(plotting.asymmetry_matrix(counts, abstained))
    if not rates or len({r.shape for r in rates}) != 1:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # an all-NaN cell stays NaN (blank)
        mean_asym = np.nanmean(np.stack(asym), axis=0)
    return np.mean(np.stack(rates), axis=0), mean_asym, len(rates), with_abstained


def heatmap_figures(tables: Tables, outdir: Path) -> list[Figure]:
    evaluation = tables.primary_evaluation
    if evaluation is None:
        return []
    rows, left = _priority(tables, MAX_HEATMAPS)
    averages = {row.key: _average_matrices(row, evaluation) for row in rows}
    # one colour scale for every asymmetry heatmap of the report, so they compare by eye
    cells = [a[1][np.isfinite(a[1])] for a in averages.values() if a is not None]
    largest = max((float(c.max()) for c in cells if c.size), default=0.0)
    vmax = largest if largest > 0 else 1.0
    out = []
    for row in rows:
        averaged = averages[row.key]
        if averaged is None:
            continue
        rates, asym, n, abstained = averaged
        names = next((s.class_names for s in row.configuration.seeds if s.class_names), None)
        k = rates.shape[0]
        names = names if names and len(names) == k else [str(i) for i in range(k)]
        name = f"confusion_{row.key}.png"
        path = plotting.mean_rates_heatmap(rates, names, f"{row.key}: confusion under {evaluation}", outdir / name,
                                        n_seeds=n, abstained_column=abstained and rates.shape[1] == k + 1)
        out.append(Figure(name, f"{row.key}: confusion rates under {evaluation}",
                          f"{row.label}. Row-normalised confusion matrix (rows true class) averaged over {n} "
                          "seed(s) (Sy-FAR Fig. 5 style).", path))
        name = f"asymmetry_{row.key}.png"
        path = plotting.mean_asymmetry_heatmap(asym, names, f"{row.key}: asymmetry under {evaluation}", outdir / name,
                                            n_seeds=n, vmax=vmax)
        out.append(Figure(name, f"{row.key}: asymmetry under {evaluation}",
                          f"{row.label}. |C_ij − C_ji| for i < j, C the row-normalised confusion matrix (rows true "
                          f"class), averaged over {n} seed(s) (Sy-FAR Fig. 4 style); its largest cell is not the mean "
                          "max_asym_gap (each seed's maximum may sit elsewhere). Colour scale 0 to "
                          f"{vmax:.3f}, the same for every configuration of this report."
                          + (_left_out(left) if row is rows[-1] else ""), path))
    return out


def group_figures(tables: Tables, outdir: Path) -> list[Figure]:
    evaluation = tables.primary_evaluation
    rows, left = _priority(tables, MAX_SERIES)
    out = []
    for family, what, pattern in GROUP_FAMILIES:
        if "{primary}" in pattern and evaluation is None:
            continue
        prefix = pattern.format(primary=evaluation)
        keys = sorted({k for r in rows for s in r.configuration.seeds for k in s.metrics if k.startswith(prefix)})
        attributes = list(dict.fromkeys(k[len(prefix):].split("/")[0] for k in keys))
        for attribute in attributes:
            groups = list(dict.fromkeys(k[len(prefix) + len(attribute) + 1:] for k in keys
                                        if k.startswith(f"{prefix}{attribute}/")))
            series = {}
            for row in rows:
                per_group = [_mean_std([s.metrics[f"{prefix}{attribute}/{g}"] for s in row.configuration.seeds
                                        if f"{prefix}{attribute}/{g}" in s.metrics]) for g in groups]
                if any(v is not None for v in per_group):
                    series[row.key] = per_group
            if not series:
                continue
            label = what if "{primary}" not in pattern else f"accuracy under {evaluation}"
            name = f"groups_{family}_{plotting.file_safe(attribute)}.png"
            path = plotting.seed_error_bars(series, groups, f"{label} per {attribute} group (mean ± std over seeds)",
                                         outdir / name, xlabel=attribute, ylabel=label, ylim=(0.0, 1.05))
            out.append(Figure(name, f"{label} per {attribute} group",
                              f"{family}/{attribute}/<group>: mean over each configuration's seeds, error bars ± one "
                              "sample std (Sy-FAR Fig. 7 style)." + _left_out(left), path))
    return out


def draw_figures(tables: Tables, outdir: str | Path) -> list[Figure]:
    """Every figure the tables' data allow, as PNG files under ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    for draw in (per_class_figure, stability_figure, strips_figure, pareto_figures, group_figures, heatmap_figures):
        figures += draw(tables, outdir)
    return figures
