"""The report's tables: configurations as rows, chosen metrics per evaluation as columns.

* **Rows** are configuration runs, labelled by the parameters in which they differ
  (:func:`labels`; a ``distfair.configuration`` tag, set by a file's ``configurations:``
  block, is the label when present). Each row also gets a short key (C1, C2, ...) that the
  figures use.
* **Columns** (:func:`resolve_columns`): each requested metric once per evaluation, clean
  first, then the ``eval.attacks`` entries in order (``robust_acc`` → ``clean_acc``,
  ``pgd20/robust_acc``, ...), or once when the metric spans evaluations (``auc_acc``,
  ``defense_parity/<attribute>``) or is named by its full MLflow key (``fgsm/worst_class_acc``,
  ``val_worst_class_acc``).
* **Cells**: the seeds' values of the column's MLflow metric on the configuration's
  FINISHED seed runs, summarised as ``distfair.metrics.summarize`` does for the parent runs
  (mean, sample std, n, 95% Student-t interval of the mean).
* **Comparisons** (:mod:`distfair.report.stats`): with a baseline, every other row against it
  on every column; without one, each column's best row (by mean, in the metric's direction)
  against every other row. One Holm family per report. A best cell is marked only when it
  is significant after the correction: with a baseline, the column's best row beats the
  baseline (or, when the baseline is best, beats every other row); without one, the best
  row beats every other row.
* **Validation-chosen** rows: a sweep's best configuration (chosen on validation metrics,
  recorded as the sweep run's ``best.*`` params) and, for a multi-objective sweep, its Pareto
  set (``pareto.json``) are marked.

Pure computation over plain inputs (:class:`ConfigurationInput`, :class:`SweepInput`): no
MLflow, no Ray. ``distfair report`` (``distfair.cli``) reads them through
``distfair.tracking``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from distfair.metrics import summarize
from distfair.report.columns import (ACCURACY, DEFAULT_METRICS, LABEL_FIRST, LABEL_IGNORED, SPEECH_METRICS, Column,
                                     differing_params, evaluation_order, labels, metric_keys, resolve_columns, short_param,
                                     without_redundant_worst10)
from distfair.report.inputs import ConfigurationInput, SeedInput, SweepInput, seed_input
from distfair.report.stats import ALPHA, Comparison, compare, holm
from distfair.results.names import metric_range

__all__ = ["ACCURACY", "DEFAULT_METRICS", "LABEL_FIRST", "LABEL_IGNORED", "SPEECH_METRICS", "Cell", "Column",
           "ComparisonRow", "ConfigurationInput", "Row", "SeedInput", "SweepInput", "Tables", "build_tables",
           "differing_params", "evaluation_order", "find_baseline", "labels", "metric_keys", "resolve_columns",
           "seed_input", "without_redundant_worst10"]


# -------------------------------------------------------------------------------- rows
@dataclass
class Cell:
    values: dict[int, float]                 # seed -> value
    mean: float | None
    std: float | None
    n: int
    ci95_low: float | None
    ci95_high: float | None
    best: bool = False                       # the column's best, significant after correction

    @classmethod
    def of(cls, values: Mapping[int, float], key: str | None = None) -> "Cell":
        """The cell of ``values`` (seed -> value) of the metric ``key``: its interval is clipped
        to the metric's range (``distfair.results.names.metric_range``), as on the configuration run."""
        s = summarize(list(values.values()), bounds=None if key is None else metric_range(key))
        return cls(dict(values), s["mean"], s["std"], s["n"], s["ci95_low"], s["ci95_high"])

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95_low": self.ci95_low,
                "ci95_high": self.ci95_high, "best": self.best,
                "seed_values": [{"seed": s, "value": v} for s, v in sorted(self.values.items())]}


@dataclass
class Row:
    key: str                                 # C1, C2, ...: the figures' name of the row
    label: str
    run_id: str
    name: str
    status: str
    experiment: str
    differing: dict[str, str]
    seeds: list[int]
    cells: dict[str, Cell]                   # column name -> cell
    configuration: ConfigurationInput
    chosen_by: list[str] = field(default_factory=list)   # sweep run ids that chose it on validation
    pareto_of: list[str] = field(default_factory=list)   # sweep run ids whose Pareto set holds it
    baseline: bool = False

    def to_json(self) -> dict:
        return {"key": self.key, "label": self.label, "run_id": self.run_id, "run_name": self.name,
                "status": self.status, "experiment": self.experiment, "params": self.differing,
                "seeds": self.seeds, "baseline": self.baseline, "chosen_on_validation_by": self.chosen_by,
                "pareto_set_of": self.pareto_of, "cells": {k: c.to_json() for k, c in self.cells.items()}}


@dataclass
class ComparisonRow:
    row: str                                 # the compared row's key
    reference: str                           # the reference row's key (baseline or the column's best)
    column: str
    result: Comparison

    def to_json(self) -> dict:
        return {"row": self.row, "reference": self.reference, "column": self.column, **self.result.to_json()}


@dataclass
class Tables:
    columns: list[Column]
    rows: list[Row]
    comparisons: list[ComparisonRow]
    mode: str                                # "baseline" or "best" (each column's best vs the others)
    baseline: str | None                     # the baseline row's key
    test: str
    alpha: float
    sweeps: list[SweepInput] = field(default_factory=list)
    #: the evaluations shown (clean first), in order; the first attack is the figures' evaluation
    evaluations: list[str] = field(default_factory=list)
    #: why requested columns are not shown (``worst10_acc`` equal to ``worst_class_acc``)
    hidden: list[str] = field(default_factory=list)

    @property
    def primary_evaluation(self) -> str | None:
        """The first attack evaluation shown: per-class bars and heatmaps are drawn under it."""
        return next((e for e in self.evaluations if e != "clean"), None)

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def to_json(self) -> dict:
        return {"mode": self.mode, "baseline": self.baseline, "test": self.test, "alpha": self.alpha,
                "evaluations": self.evaluations, "columns": [c.to_json() for c in self.columns],
                "hidden_columns": self.hidden,
                "rows": [r.to_json() for r in self.rows],
                "comparisons": [c.to_json() for c in self.comparisons],
                "sweeps": [{"run_id": s.run_id, "name": s.name, "objective": s.objective,
                            "best_params": s.best_params, "pareto_run_ids": s.pareto_run_ids} for s in self.sweeps]}


def find_baseline(rows: Sequence[Row], name: str) -> Row:
    """The row ``name`` names: its label, key (C1), ``distfair.configuration`` tag, run id
    (or its first 8 characters) or run name; else the one row with a differing param (then
    any param) whose value or ``key=value`` is ``name`` (``pgd_at`` matches
    ``defense.name=pgd_at``). Raises ValueError when none or several match."""
    exact = [r for r in rows if name in (r.label, r.key, r.run_id, r.run_id[:8], r.name,
                                         r.configuration.tags.get("distfair.configuration"))]
    for params in ("differing", "all"):       # the params that label rows first, then any param
        if exact:
            break
        exact = [r for r in rows if any(name in (v, short_param(v), f"{k}={v}", f"{k}={short_param(v)}") for k, v in
                                        (r.differing if params == "differing" else r.configuration.params).items())]
    if len(exact) == 1:
        return exact[0]
    known = "; ".join(f"{r.key}: {r.label}" for r in rows)
    if not exact:
        raise ValueError(f"--baseline: no configuration matches {name!r}; the configurations are {known}")
    raise ValueError(f"--baseline: {name!r} is ambiguous, it matches {', '.join(r.key + ': ' + r.label for r in exact)}"
                     f"; give a label, key (C1, ...) or run id instead")


def _mark_sweeps(rows: Sequence[Row], sweeps: Sequence[SweepInput]) -> None:
    for sweep in sweeps:
        for row in rows:
            tags = row.configuration.tags
            if tags.get("mlflow.parentRunId") != sweep.run_id:
                continue
            if sweep.best_params:
                try:
                    trial = json.loads(tags.get("distfair.trial_params", "{}"))
                except ValueError:
                    trial = {}
                if trial and {k: str(v) for k, v in trial.items()} == dict(sweep.best_params):
                    row.chosen_by.append(sweep.run_id)
            if sweep.pareto_run_ids and row.run_id in sweep.pareto_run_ids:
                row.pareto_of.append(sweep.run_id)


def _best_row(rows: Sequence[Row], column: Column) -> Row | None:
    """The row with the best mean in ``column`` (None: no direction, no values, or a tie)."""
    if column.direction is None:
        return None
    have = [r for r in rows if r.cells[column.name].mean is not None]
    if not have:
        return None
    sign = 1.0 if column.direction == "max" else -1.0
    ranked = sorted(have, key=lambda r: -sign * r.cells[column.name].mean)
    if len(ranked) > 1 and math.isclose(ranked[0].cells[column.name].mean, ranked[1].cells[column.name].mean,
                                        rel_tol=0, abs_tol=1e-12):
        return None
    return ranked[0]


def build_tables(configurations: Sequence[ConfigurationInput], *, metrics: Sequence[str] | None = None,
                 evaluations: Sequence[str] | None = None, baseline: str | None = None, test: str = "welch",
                 alpha: float = ALPHA, sweeps: Sequence[SweepInput] = ()) -> Tables:
    """Rows, columns, cells, comparisons with Holm's correction, best cells and the sweeps'
    validation choices. Raises ValueError for an unknown metric, evaluation or baseline."""
    if not configurations:
        raise ValueError("no configurations to report")
    columns, hidden = without_redundant_worst10(resolve_columns(metrics, configurations, evaluations=evaluations),
                                                configurations)
    if not columns:
        raise ValueError("--metrics: " + " ".join(hidden) + " Ask for worst_class_acc instead.")
    rows = []
    for i, (c, label, differing) in enumerate(zip(configurations, labels(configurations),
                                                  differing_params(configurations)), 1):
        cells = {col.name: Cell.of({s.seed: s.metrics[col.key] for s in c.seeds
                                    if isinstance(s.metrics.get(col.key), (int, float))
                                    and math.isfinite(s.metrics[col.key])}, col.key) for col in columns}
        rows.append(Row(key=f"C{i}", label=label, run_id=c.run_id, name=c.name, status=c.status,
                        experiment=c.experiment, differing=differing, seeds=sorted(s.seed for s in c.seeds),
                        cells=cells, configuration=c))
    _mark_sweeps(rows, sweeps)
    reference = None
    if baseline is not None:
        reference = find_baseline(rows, baseline)
        reference.baseline = True
    comparisons: list[ComparisonRow] = []
    for col in columns:
        ref = reference or _best_row(rows, col)
        if ref is None:
            continue
        for row in rows:
            if row is ref:
                continue
            comparisons.append(ComparisonRow(row.key, ref.key, col.name,
                                             compare(row.cells[col.name].values, ref.cells[col.name].values,
                                                     test=test, alpha=alpha)))
    holm([c.result for c in comparisons], alpha)
    shown = [e for e in evaluation_order(configurations) if evaluations is None or e in evaluations]
    tables = Tables(columns, rows, comparisons, "baseline" if reference else "best",
                    reference.key if reference else None, test, alpha, list(sweeps), shown, hidden)
    for col in columns:
        best = _best_row(rows, col)
        if best is not None and _best_is_significant(tables, col, best):
            best.cells[col.name].best = True
    return tables


def _best_is_significant(tables: Tables, column: Column, best: Row) -> bool:
    """The best-cell rule (module docstring): significant after Holm's correction."""
    mine = [c for c in tables.comparisons if c.column == column.name]
    if tables.mode == "baseline" and best.key != tables.baseline:
        return any(c.row == best.key and c.result.significant for c in mine)
    # the baseline is best, or no baseline (the best is the reference): it must beat every other row
    others = [r for r in tables.rows if r.key != best.key and r.cells[column.name].n > 0]
    against = {c.row: c for c in mine if (c.reference == best.key)}
    return bool(others) and all(r.key in against and against[r.key].result.significant for r in others)
