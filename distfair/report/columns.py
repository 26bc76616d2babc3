"""The report table's columns (each requested metric once per evaluation, or once when it spans
evaluations) and its row labels (the parameters in which configurations differ); see
:mod:`distfair.report.tables`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from distfair.metrics import worst10_is_worst_class
from distfair.report.inputs import ConfigurationInput
# the metric names (distfair.results.names): the key grammar, the report's default metrics, the
# names of accuracy and which way is better per family (DIRECTION: families not listed get no best cell)
from distfair.results.names import (ACC, ACCURACY_NAMES, CLEAN, CLEAN_PREFIX, DEFAULT_REPORT_METRICS, DIRECTION,
                                    SEPARATOR, SPEECH_REPORT_METRICS, TEST, VAL_PREFIX, attacked_name,
                                    is_nested_family, key_prefix, unprefixed)

#: the metrics of a table when none are asked for (those a configuration has)
DEFAULT_METRICS = DEFAULT_REPORT_METRICS
#: speech paper 003 summaries: added to the default metrics when the runs have them
SPEECH_METRICS = SPEECH_REPORT_METRICS
#: accuracy goes by these names; its column metric is "acc" (the result records' name)
ACCURACY = ACCURACY_NAMES
#: flat params that never label a configuration (bookkeeping, resources, free text)
LABEL_IGNORED = re.compile(r"^(seeds|description|scaling\..*|train\.eval_batch_size)$")
#: params shown first in a label, in this order
LABEL_FIRST = ("defense.name", "model.name", "dataset.name")
#: MLflow's UUID run ids shortened in labels
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
        parts = unprefixed(self.key).split(SEPARATOR)
        if len(parts) > 1 and parts[0] not in DIRECTION and parts[0] not in ACCURACY:
            parts = parts[1:]                  # an evaluation's key: <evaluation>/<metric>[/...]
        return ACC if parts[0] in ACCURACY else parts[0]

    @property
    def direction(self) -> str | None:
        return DIRECTION.get(self.family)

    def to_json(self) -> dict:
        return {"name": self.name, "metric": self.metric, "evaluation": self.evaluation, "key": self.key,
                "direction": self.direction}


def evaluation_order(configurations: Sequence[ConfigurationInput]) -> list[str]:
    """``clean`` and every attack entry of the configurations, in first-seen order."""
    out = [CLEAN]
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
    if SEPARATOR in key and not key.startswith((CLEAN_PREFIX, VAL_PREFIX)):
        head, rest = key.split(SEPARATOR, 1)
        if not is_nested_family(head):        # <evaluation>/<metric>, not <family>/<field>
            return rest
    return key


def _columns_of(name: str, keys: set[str], order: Sequence[str]) -> list[Column]:
    full_key = name.startswith((CLEAN_PREFIX, VAL_PREFIX)) or any(name.startswith(f"{e}{SEPARATOR}") for e in order)
    if not full_key:
        base = ACC if name in ACCURACY else name
        out = []
        for evaluation in order:
            prefix = key_prefix(TEST, evaluation)           # clean_, <evaluation>/
            key = prefix + (base if evaluation == CLEAN else attacked_name(base))
            if key in keys:
                out.append(Column(base, evaluation, key))
            else:
                out += [Column(k[len(prefix):], evaluation, k) for k in sorted(keys)
                        if k.startswith(f"{prefix}{base}{SEPARATOR}")]
        if out:
            return out
    if name in keys:
        return [Column(name, None, name)]
    return [Column(k, None, k) for k in sorted(keys) if k.startswith(f"{name}{SEPARATOR}")]


# ------------------------------------------------------------------------------ labels
def short_param(value: str) -> str:
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
        label = c.tags.get("distfair.configuration") or ", ".join(f"{k}={short_param(v)}" for k, v in _ordered(params))
        out.append(label or c.name or c.run_id[:8])
    counts = {label: out.count(label) for label in out}
    return [f"{label} #{c.run_id[:8]}" if counts[label] > 1 else label for label, c in zip(out, configurations)]
