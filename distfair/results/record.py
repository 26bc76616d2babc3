"""The versioned result records: one JSON document per seed and one per configuration.

Both are plain JSON (``json.load`` reads them; no MLflow, no distfair needed) with a
``schema_version`` and the resolved configuration, and every value as a *row* whose meaning
is in fields, never in a name to parse:

* **seed record** (:func:`seed_record`, artifact ``result.json`` of each seed run): one row
  per value MLflow holds for the run (per-epoch curves and final values) and per value that
  is undefined (``value: null``, not logged to MLflow)::

      {"split": "test", "evaluation": "pgd20", "metric": "acc", "attribute": null,
       "group": null, "stage": null, "epoch": null, "step": 3, "value": 0.61,
       "mlflow_key": "pgd20/robust_acc", "mlflow_aliases": ["robust_acc"]}

  ``split``: ``train``, ``val`` or ``test``; ``evaluation``: ``clean``, an ``eval.attacks``
  entry name, ``train_attack`` (the per-epoch validation under the cheap training attack)
  or null (training values, timings, and the evaluation summaries' metrics that span
  evaluations, e.g. ``auc_acc``); ``metric``: the evaluation's own metric name (``acc``
  for clean and attacked accuracy alike); subgroup metrics carry ``attribute`` (and
  ``group`` for ``group_acc``), ensemble stages carry ``stage`` (metric-safe names, as in
  the MLflow keys); ``epoch`` is set on per-epoch rows and null on final ones; ``step`` is
  the MLflow step; ``mlflow_key`` the MLflow metric name and ``mlflow_aliases`` the other
  names the same value is logged under (the primary evaluation attack is logged bare too).
  Besides the rows: class names, the evaluations, and per test evaluation its per-class
  accuracies, confusion matrix and abstentions; every evaluation summary's document under
  ``summaries`` (subgroup reports, targeted success rates, self-checks, ...); the
  summaries' findings (``checks``), tags and evaluation errors; ``worker_node_ids``: the Ray
  node id of each Ray Train worker that trained the seed (index = world rank; empty in
  records written outside Ray Train), so a placement (``scaling.placement_strategy``) can
  be checked after the fact.
* **configuration record** (:func:`configuration_record`, artifact
  ``configuration_result.json`` of the parent run): the seeds, and one *entry* per row
  identity (split, evaluation, metric, attribute, group, stage, epoch) with the value of
  every seed and ``mean``, ``std`` (ddof = 1), ``min``, ``max``, ``ci95_low``,
  ``ci95_high`` (clipped to the metric's range, ``distfair.results.names.metric_range``), ``n``
  (``distfair.metrics.summarize``). ``parent_summary: true`` marks the
  entries whose statistics the parent run logs as ``<mlflow_key>_<stat>`` (the latest value
  of each key, as MLflow reports it).

The JSON Schemas :data:`SEED_RECORD_SCHEMA` and :data:`CONFIGURATION_RECORD_SCHEMA` document
the formats. Built from structured results (``SeedResult.to_dict()``: the evaluations'
metric dicts, the validation pass's, the per-epoch history, timings), never from MLflow. Every
MLflow name in them is built by ``distfair.results.names`` (:class:`~distfair.results.names.MetricKey`).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from distfair import __version__
from distfair.metrics import summarize
from distfair.results import names
from distfair.results.names import (CLEAN, PER_CLASS_ACC, TEST, TRAIN, TRAIN_PREFIX, VAL, VAL_PREFIX, MetricKey,
                                    metric_range, split_fields)
#: re-exported where they were defined before ``distfair.results.names``
from distfair.results.names import TRAIN_ATTACK, evaluation_label  # noqa: F401

#: 2: the evaluation summaries' documents under ``summaries`` (1 had ``subgroups`` and
#: ``target_success`` at the top) and their cross-evaluation metrics as rows
SCHEMA_VERSION = 2
SEED_RECORD_NAME = "result.json"
CONFIGURATION_RECORD_NAME = "configuration_result.json"
IDENTITY = ("split", "evaluation", "metric", "attribute", "group", "stage", "epoch")
#: the statistics of every configuration entry (``distfair.results.names.SEED_STATISTICS``)
STATS = names.SEED_STATISTICS
#: per-epoch validation keys of ``train_epoch`` -> (evaluation, metric)
_EPOCH_VAL = names.EPOCH_VALIDATION
#: timings of the final step: metric -> split
_TIMINGS = names.TIMINGS


def _value(v) -> float | None:
    """A finite float, or None for what MLflow does not log (None, NaN, inf, non-numbers)."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def _row(split, evaluation, metric, value, *, step, epoch=None, key, aliases=(), **fields) -> dict:
    row = {"split": split, "evaluation": evaluation, "metric": metric, "attribute": None, "group": None,
           "stage": None, "epoch": epoch, "step": step, "value": _value(value), "mlflow_key": key,
           "mlflow_aliases": list(aliases)}
    row.update(fields)
    return row


#: the family and the nested fields of one key of an evaluation's metric dict
_fields = split_fields


def evaluation_rows(split: str, per_eval: Mapping[str, Mapping], primary: str | None, *, step: int) -> list[dict]:
    """Rows of one split's final evaluations (``{"clean": metrics, <entry>: metrics}``), with
    the MLflow names ``distfair.engine.train.metric_record`` / ``validation_record`` give them."""
    rows = []
    for evaluation, metrics in per_eval.items():
        for metric, value in (metrics or {}).items():
            if metric == PER_CLASS_ACC:
                continue
            family, fields = _fields(metric)
            if split == VAL:
                if evaluation == CLEAN:
                    key, aliases = MetricKey.of(VAL, CLEAN, metric).mlflow_key(), ()
                elif evaluation == primary:
                    key, aliases = MetricKey.of(VAL, None, metric).mlflow_key(), ()
                else:
                    continue                    # only the clean and the primary pass are logged
            elif evaluation == CLEAN:
                key, aliases = MetricKey.of(split, CLEAN, metric).mlflow_key(), ()
            else:
                key = MetricKey.of(split, evaluation, metric).mlflow_key()
                aliases = [MetricKey.of(split, None, metric).mlflow_key()] if evaluation == primary else []
            rows.append(_row(split, evaluation, family, value, step=step, key=key, aliases=aliases, **fields))
    return rows


def summary_rows(summary_metrics: Mapping[str, Mapping], *, step: int) -> list[dict]:
    """Rows of the evaluation summaries' cross-evaluation metrics (``{"test": {...}, "val":
    {...}}``): ``evaluation`` null, the key's family as ``metric`` with its nested fields;
    logged bare on the test split and ``val_<key>`` on the validation split."""
    rows = []
    for split, metrics in summary_metrics.items():
        for key, value in (metrics or {}).items():
            family, fields = _fields(key)
            rows.append(_row(split, None, family, value, step=step, key=MetricKey(split, None, key).mlflow_key(),
                             **fields))
    return rows


def history_rows(history: Sequence[Mapping]) -> list[dict]:
    """Rows of the per-epoch curves (``step = epoch``): training values on split ``train``
    (``train_<m>`` as metric ``<m>``; ``lr``, ``defense_*``, ``epoch_time_s`` as they are),
    the per-epoch validation on split ``val``."""
    rows = []
    for entry in history:
        epoch = int(entry["epoch"])
        for key, value in entry.items():
            if key == "epoch":
                continue
            if key in _EPOCH_VAL:
                evaluation, metric, split = *_EPOCH_VAL[key], "val"
            elif key.startswith(VAL_PREFIX):
                evaluation, metric, split = None, key[len(VAL_PREFIX):], VAL
            else:
                evaluation, metric, split = None, key[len(TRAIN_PREFIX):] if key.startswith(TRAIN_PREFIX) else key, TRAIN
            rows.append(_row(split, evaluation, metric, value, step=epoch, epoch=epoch, key=key))
    return rows


def seed_record(result: Mapping) -> dict:
    """The record of one seed from ``SeedResult.to_dict()``."""
    history = list(result.get("history") or [])
    step = len(history)                  # the final values' MLflow step
    evaluations = list(result.get("evaluations") or [])
    primary = evaluations[0]["name"] if evaluations else None
    rows = history_rows(history)
    rows += evaluation_rows(VAL, result.get("val_per_eval") or {}, primary, step=step)
    rows += evaluation_rows(TEST, result.get("per_eval") or {}, primary, step=step)
    rows += summary_rows(result.get("summary_metrics") or {}, step=step)
    for metric, value in (result.get("timings") or {}).items():
        rows.append(_row(_TIMINGS.get(metric), None, metric, value, step=step, key=metric))
    return {
        "schema_version": SCHEMA_VERSION, "kind": "seed", "distfair_version": __version__,
        "seed": int(result["seed"]), "config": result.get("config") or {},
        "class_names": list(result.get("class_names") or []),
        "evaluations": evaluations, "primary_evaluation": primary, "values": rows,
        "per_class_acc": {"test": dict(result.get("per_class_acc") or {})},
        "confusion_matrices": {"rows": "true class", "columns": "predicted class",
                               "test": dict(result.get("confusion") or {})},
        # every evaluation summary's document (the seed run's artifact of the same content)
        "summaries": {name: {"artifact": s["artifact"], "test": s["document"]}
                      for name, s in (result.get("summaries") or {}).items()},
        # a predictor that can abstain: per evaluation the abstentions per true class and the rates
        "abstentions": {"test": dict(result.get("abstentions") or {})},
        "checks": list(result.get("checks") or []), "tags": dict(result.get("tags") or {}),
        "errors": dict(result.get("eval_errors") or {}),
        "worker_node_ids": [str(n) for n in result.get("worker_node_ids") or []],
    }


def _identity(row: Mapping) -> tuple:
    return tuple(row.get(f) for f in IDENTITY)


def latest_values(record: Mapping) -> dict[str, float]:
    """``{mlflow name: value}`` as MLflow reports a seed run's metrics: the value of the
    highest step of every logged key (aliases included)."""
    best: dict[str, tuple[int, float]] = {}
    for row in record["values"]:
        if row["value"] is None:
            continue
        for key in [row["mlflow_key"], *row["mlflow_aliases"]]:
            if key not in best or row["step"] >= best[key][0]:
                best[key] = (row["step"], row["value"])
    return {k: v for k, (_, v) in best.items()}


def configuration_record(config: Mapping, seed_records: Sequence[Mapping], *,
                         errors: Mapping[int, str] | None = None) -> dict:
    """The record of one configuration from its seeds' records: per row identity the seeds'
    values and their statistics (``distfair.metrics.summarize``)."""
    records = sorted(seed_records, key=lambda r: r["seed"])
    entries: dict[tuple, dict] = {}
    latest_identity: dict[str, set] = {}
    for record in records:
        newest: dict[str, tuple[int, tuple]] = {}
        for row in record["values"]:
            ident = _identity(row)
            entry = entries.setdefault(ident, {**{f: row[f] for f in IDENTITY}, "mlflow_key": row["mlflow_key"],
                                               "mlflow_aliases": list(row["mlflow_aliases"]), "seed_values": []})
            entry["seed_values"].append({"seed": record["seed"], "value": row["value"]})
            if row["value"] is not None and (row["mlflow_key"] not in newest
                                             or row["step"] >= newest[row["mlflow_key"]][0]):
                newest[row["mlflow_key"]] = (row["step"], ident)
        for key, (_, ident) in newest.items():
            latest_identity.setdefault(key, set()).add(ident)
    out = []
    for ident, entry in entries.items():
        stats = summarize([v["value"] for v in entry["seed_values"]], bounds=metric_range(entry["mlflow_key"]))
        entry.update({s: stats[s] for s in STATS}, n=stats["n"],
                     parent_summary=latest_identity.get(entry["mlflow_key"]) == {ident})
        out.append(entry)
    return {"schema_version": SCHEMA_VERSION, "kind": "configuration", "distfair_version": __version__,
            "config": dict(config), "seeds": [r["seed"] for r in records],
            "errors": [{"seed": int(s), "error": str(e)} for s, e in sorted((errors or {}).items())],
            "entries": out}


def find_entry(record: Mapping, **fields) -> dict:
    """The one entry (or seed-record row) whose fields equal ``fields`` (unnamed identity
    fields must be null, ``epoch`` included). Raises KeyError if there is none."""
    wanted = {**{f: None for f in IDENTITY}, **fields}
    for entry in record.get("entries", record.get("values", [])):
        if all(entry.get(f) == v for f, v in wanted.items()):
            return entry
    raise KeyError(f"no entry with {fields}")


# ------------------------------------------------------------------------------- JSON Schemas
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_IDENTITY_PROPS = {
    "split": {"enum": ["train", "val", "test"]},
    "evaluation": {**_NULLABLE_STR, "description": "clean, an eval.attacks entry name, train_attack, or null"},
    "metric": {"type": "string"},
    "attribute": _NULLABLE_STR, "group": _NULLABLE_STR, "stage": _NULLABLE_STR,
    "epoch": {"type": ["integer", "null"], "minimum": 0},
    "mlflow_key": {"type": "string"},
    "mlflow_aliases": {"type": "array", "items": {"type": "string"}},
}
_COMMON = {"schema_version": {"const": SCHEMA_VERSION}, "distfair_version": {"type": "string"},
           "config": {"type": "object"}}

SEED_RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "distfair seed result record",
    "type": "object",
    "required": ["schema_version", "kind", "distfair_version", "seed", "config", "class_names", "evaluations",
                 "primary_evaluation", "values", "per_class_acc", "confusion_matrices", "checks", "tags", "errors"],
    "properties": {
        **_COMMON, "kind": {"const": "seed"}, "seed": {"type": "integer"},
        "class_names": {"type": "array", "items": {"type": "string"}},
        "evaluations": {"type": "array", "items": {"type": "object", "required": ["name", "attack"]}},
        "primary_evaluation": _NULLABLE_STR,
        "values": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": [*IDENTITY, "step", "value", "mlflow_key", "mlflow_aliases"],
            "properties": {**_IDENTITY_PROPS, "step": {"type": "integer", "minimum": 0}, "value": _NULLABLE_NUM}}},
        "per_class_acc": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "array", "items": _NULLABLE_NUM}}},
        "confusion_matrices": {"type": "object", "properties": {"test": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}}},
        "summaries": {"type": "object", "description": "evaluation summary -> {artifact: its file on the seed "
                      "run, test: its document} (subgroups, target_success, self_checks, auc_acc, ...)",
                      "additionalProperties": {"type": "object", "required": ["artifact", "test"]}},
        "abstentions": {"type": "object", "description": "abstaining predictors: abstained, per_class_rejection"},
        "checks": {"type": "array", "items": {"type": "object"}},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        "worker_node_ids": {"type": "array", "items": {"type": "string"},
                            "description": "Ray node id of each Ray Train worker, index = world rank"},
    },
}

CONFIGURATION_RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "distfair configuration result record",
    "type": "object",
    "required": ["schema_version", "kind", "distfair_version", "config", "seeds", "errors", "entries"],
    "properties": {
        **_COMMON, "kind": {"const": "configuration"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "errors": {"type": "array", "items": {"type": "object", "required": ["seed", "error"],
                                              "properties": {"seed": {"type": "integer"},
                                                             "error": {"type": "string"}}}},
        "entries": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": [*IDENTITY, "mlflow_key", "mlflow_aliases", "seed_values", *STATS, "n", "parent_summary"],
            "properties": {
                **_IDENTITY_PROPS, **{s: _NULLABLE_NUM for s in STATS},
                "n": {"type": "integer", "minimum": 0}, "parent_summary": {"type": "boolean"},
                "seed_values": {"type": "array", "items": {
                    "type": "object", "required": ["seed", "value"], "additionalProperties": False,
                    "properties": {"seed": {"type": "integer"}, "value": _NULLABLE_NUM}}}}}},
    },
}
