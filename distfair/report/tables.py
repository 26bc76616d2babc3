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
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from distfair.metrics import metric_range, summarize, worst10_is_worst_class
from distfair.report.stats import ALPHA, Comparison, compare, holm

#: the metrics of a table when none are asked for (those a configuration has)
DEFAULT_METRICS = ("robust_acc", "worst_class_acc", "acc_gap", "nsd")
#: speech paper 003 summaries: added to the default metrics when the runs have them
SPEECH_METRICS = ("auc_acc", "defense_parity", "auc_fpr", "fpr_parity")
#: accuracy goes by these names; its column metric is "acc" (the result records' name)
ACCURACY = ("acc", "robust_acc", "clean_acc")

#: metric family -> which way is better ("max" or "min"); families not listed get no best cell
DIRECTION: dict[str, str] = {
    **dict.fromkeys(("acc", "worst_class_acc", "worst10_acc", "group_acc", "auc_acc", "group_auc_acc", "tgt_min",
                     "stage_acc"), "max"),
    **dict.fromkeys(("acc_gap", "nsd", "max_asym_gap", "sym_loss", "soft_sym_loss", "tgt_max", "tgt_std",
                     "max_bipartition_asym", "group_gap", "max_group_asym", "defense_parity", "fpr_parity",
                     "auc_fpr", "group_auc_fpr", "rejection_rate", "group_rejection", "clean_false_rejection_rate",
                     "target_success_rate"), "min"),
}
#: flat params that never label a configuration (bookkeeping, resources, free text)
LABEL_IGNORED = re.compile(r"^(seeds|description|scaling\..*|train\.eval_batch_size)$")
#: params shown first in a label, in this order
LABEL_FIRST = ("defense.name", "model.name", "dataset.name")
#: MLflow's UUID run ids shortened in labels
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# ------------------------------------------------------------------------------ inputs
@dataclass
class SeedInput:
    """One FINISHED seed run: its MLflow metrics (latest values) and, from its result
    record (or its ``per_class_acc.json`` / ``confusion_matrices.json``), per test evaluation
    its per-class accuracies, confusion counts and abstentions."""
    seed: int
    run_id: str
    metrics: dict[str, float]
    class_names: list[str] | None = None
    per_class_acc: dict[str, list] = field(default_factory=dict)
    confusion: dict[str, list] = field(default_factory=dict)
    abstained: dict[str, list] = field(default_factory=dict)


@dataclass
class ConfigurationInput:
    """One configuration run: its flat params and tags as MLflow holds them (strings), and
    its FINISHED seed runs."""
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    seeds: list[SeedInput]
    experiment: str = ""

    @property
    def evaluations(self) -> list[str]:
        """The ``eval.attacks`` entry names, in order (from the params)."""
        found = {}
        for key, value in self.params.items():
            m = re.fullmatch(r"eval\.attacks\.(\d+)\.name", key)
            if m:
                found[int(m.group(1))] = value
        return [found[i] for i in sorted(found)]


@dataclass
class SweepInput:
    """A sweep run: its objective targets (``[{metric, stat, mode, k}]``), the params of the
    configuration it chose (``best.*``, as strings) and its Pareto set (configuration run ids)."""
    run_id: str
    name: str
    objective: list[dict]
    best_params: dict[str, str] | None = None
    pareto_run_ids: list[str] | None = None


def seed_input(seed: int, run_id: str, metrics: Mapping[str, float], *, record: Mapping | None = None,
               per_class_acc: Mapping | None = None, confusion: Mapping | None = None) -> SeedInput:
    """A seed run's input from its result record (``result.json``: per-class accuracies,
    confusion matrices and abstentions of the test evaluations), or, for a seed run recorded
    before records existed, from its ``per_class_acc.json`` and ``confusion_matrices.json``."""
    if record is not None:
        abstentions = (record.get("abstentions") or {}).get("test") or {}
        return SeedInput(seed, run_id, dict(metrics), list(record.get("class_names") or []) or None,
                         dict((record.get("per_class_acc") or {}).get("test") or {}),
                         dict((record.get("confusion_matrices") or {}).get("test") or {}),
                         {e: v["abstained"] for e, v in abstentions.items()
                          if isinstance(v, dict) and "abstained" in v})
    names = (per_class_acc or {}).get("class_names") or (confusion or {}).get("class_names")
    return SeedInput(seed, run_id, dict(metrics), list(names) if names else None,
                     dict((per_class_acc or {}).get("per_class_acc") or {}),
                     dict((confusion or {}).get("matrices") or {}), dict((confusion or {}).get("abstained") or {}))


# ----------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    """One table column: ``metric`` (its family name as requested, ``acc`` for accuracy),
    the ``evaluation`` (``clean``, an attack entry, or None for a metric that spans
    evaluations or a full key), and the seed runs' MLflow ``key``."""
    metric: str
    evaluation: str | None
    key: str

    @property
    def name(self) -> str:
        return f"{self.metric} ({self.evaluation})" if self.evaluation else self.metric

    @property
    def family(self) -> str:
        """The metric family (``group_acc`` of ``pgd20/group_acc/gender/F``): what decides the direction."""
        key = self.key
        for prefix in ("val_clean_", "val_", "clean_"):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        parts = key.split("/")
        if len(parts) > 1 and parts[0] not in DIRECTION and parts[0] not in ACCURACY:
            parts = parts[1:]                  # an evaluation's key: <evaluation>/<metric>[/...]
        return "acc" if parts[0] in ACCURACY else parts[0]

    @property
    def direction(self) -> str | None:
        return DIRECTION.get(self.family)

    def to_json(self) -> dict:
        return {"name": self.name, "metric": self.metric, "evaluation": self.evaluation, "key": self.key,
                "direction": self.direction}


def _attacked(base: str) -> str:
    return "robust_acc" if base == "acc" else base


def evaluation_order(configurations: Sequence[ConfigurationInput]) -> list[str]:
    """``clean`` and every attack entry of the configurations, in first-seen order."""
    out = ["clean"]
    for c in configurations:
        out += [e for e in c.evaluations if e not in out]
    return out


def metric_keys(configurations: Sequence[ConfigurationInput]) -> set[str]:
    return {k for c in configurations for s in c.seeds for k in s.metrics}


def resolve_columns(metrics: Sequence[str] | None, configurations: Sequence[ConfigurationInput], *,
                    evaluations: Sequence[str] | None = None) -> list[Column]:
    """The columns of the requested ``metrics`` (default :data:`DEFAULT_METRICS` plus the
    speech summaries the runs have), for ``evaluations`` (default: clean and every attack).
    Raises ValueError naming a metric or evaluation the runs do not have."""
    keys = metric_keys(configurations)
    order = evaluation_order(configurations)
    if evaluations is not None:
        unknown = [e for e in evaluations if e not in order]
        if unknown:
            raise ValueError(f"--evaluations: unknown evaluation(s) {', '.join(unknown)}; the runs have "
                             f"{', '.join(order)}")
        order = [e for e in order if e in evaluations]
    requested = list(metrics) if metrics else [*DEFAULT_METRICS, *SPEECH_METRICS]
    columns: list[Column] = []
    missing = []
    for name in requested:
        found = _columns_of(name, keys, order)
        if not found and metrics:
            missing.append(name)
        columns += [c for c in found if c not in columns]
    if missing:
        examples = sorted({_example(k) for k in keys})[:12]
        raise ValueError(f"--metrics: no seed run has {', '.join(missing)}; metrics there include "
                         f"{', '.join(examples) or 'none'}")
    if not columns:
        raise ValueError("no seed run has any of the default metrics "
                         f"({', '.join(requested)}); name some with --metrics")
    return columns


def _same_as_worst_class(column: Column, configurations: Sequence[ConfigurationInput]) -> bool:
    """A ``worst10_acc`` column whose every seed equals ``worst_class_acc`` of the same
    evaluation (always so with at most 10 classes: the lowest ceil(K/10) = 1 class)."""
    if column.family != "worst10_acc":
        return False
    head, sep, last = column.key.rpartition("/")
    twin = head + sep + last.replace("worst10_acc", "worst_class_acc")
    compared = False
    for c in configurations:
        mine = {s.seed: s.metrics[column.key] for s in c.seeds if column.key in s.metrics}
        if not mine:
            continue
        if not worst10_is_worst_class(mine, {s.seed: s.metrics.get(twin) for s in c.seeds if s.seed in mine}):
            return False
        compared = True
    return compared


def without_redundant_worst10(columns: Sequence[Column], configurations: Sequence[ConfigurationInput]
                              ) -> tuple[list[Column], list[str]]:
    """(the columns to show, notes on those left out): a ``worst10_acc`` column is left out
    where it equals ``worst_class_acc`` in every seed of every configuration, as it always does
    with at most 10 classes (docs/methods/metrics.md)."""
    kept, notes = [], []
    for col in columns:
        if _same_as_worst_class(col, configurations):
            notes.append(f"{col.name} is not shown: it equals worst_class_acc in every seed (with at most 10 "
                         "classes worst10_acc, the mean of the lowest ⌈K/10⌉ class accuracies, is the worst "
                         "class).")
        else:
            kept.append(col)
    return kept, notes


def _example(key: str) -> str:
    """A key as one would ask for it (``pgd20/robust_acc`` -> ``robust_acc``)."""
    if "/" in key and not key.startswith(("clean_", "val_")):
        head, rest = key.split("/", 1)
        if head not in ("group_acc", "group_gap", "max_group_asym", "defense_parity", "fpr_parity", "group_auc_acc",
                        "group_auc_fpr", "stage_acc", "group_rejection"):
            return rest
    return key


def _columns_of(name: str, keys: set[str], order: Sequence[str]) -> list[Column]:
    full_key = name.startswith(("clean_", "val_")) or any(name.startswith(f"{e}/") for e in order)
    if not full_key:
        base = "acc" if name in ACCURACY else name
        out = []
        for evaluation in order:
            prefix = "clean_" if evaluation == "clean" else f"{evaluation}/"
            key = prefix + (base if evaluation == "clean" else _attacked(base))
            if key in keys:
                out.append(Column(base, evaluation, key))
            else:
                out += [Column(k[len(prefix):], evaluation, k) for k in sorted(keys)
                        if k.startswith(f"{prefix}{base}/")]
        if out:
            return out
    if name in keys:
        return [Column(name, None, name)]
    return [Column(k, None, k) for k in sorted(keys) if k.startswith(f"{name}/")]


# ------------------------------------------------------------------------------ labels
def _short(value: str) -> str:
    text = str(value)
    if _RUN_ID.match(text):
        return text[:8]
    try:
        number = float(text)
    except ValueError:
        return text if len(text) <= 40 else text[:37] + "..."
    if number.is_integer() and "e" not in text.lower() and "." not in text:
        return text
    return format(number, ".4g")


def differing_params(configurations: Sequence[ConfigurationInput]) -> list[dict[str, str]]:
    """Per configuration, the params in which it differs from the others (as MLflow holds
    them): a block's ``name`` (``defense.name``) when it is not the same everywhere; any other
    key when its value differs among the configurations with the same block name (so a
    Sy-FAR-only ``defense.lambda_sym`` labels Sy-FAR configurations only when they differ in
    it). Bookkeeping (:data:`LABEL_IGNORED`) never labels."""
    keys = sorted({k for c in configurations for k in c.params if not LABEL_IGNORED.match(k)})
    out: list[dict[str, str]] = [{} for _ in configurations]
    for key in keys:
        block = key.split(".")[0]
        if key == f"{block}.name":
            if len({c.params.get(key) for c in configurations}) > 1:
                for i, c in enumerate(configurations):
                    if key in c.params:
                        out[i][key] = c.params[key]
            continue
        for i, c in enumerate(configurations):
            if key not in c.params:
                continue
            group = [o for o in configurations if o.params.get(f"{block}.name") == c.params.get(f"{block}.name")]
            if len({o.params.get(key) for o in group}) > 1:
                out[i][key] = c.params[key]
    return out


def _ordered(params: Mapping[str, str]) -> list[tuple[str, str]]:
    first = [(k, params[k]) for k in LABEL_FIRST if k in params]
    return first + sorted((k, v) for k, v in params.items() if k not in LABEL_FIRST)


def labels(configurations: Sequence[ConfigurationInput]) -> list[str]:
    """A readable, unique label per configuration: its ``distfair.configuration`` tag, else
    ``key=value`` of the params it differs in (``defense.name=syfar, defense.lambda_sym=2``),
    else its run name; duplicates get ``#<run id>``."""
    differing = differing_params(configurations)
    out = []
    for c, params in zip(configurations, differing):
        label = c.tags.get("distfair.configuration") or ", ".join(f"{k}={_short(v)}" for k, v in _ordered(params))
        out.append(label or c.name or c.run_id[:8])
    counts = {label: out.count(label) for label in out}
    return [f"{label} #{c.run_id[:8]}" if counts[label] > 1 else label for label, c in zip(out, configurations)]


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
        to the metric's range (``distfair.metrics.metric_range``), as on the configuration run."""
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
        exact = [r for r in rows if any(name in (v, _short(v), f"{k}={v}", f"{k}={_short(v)}") for k, v in
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
