"""Subgroup fairness of one evaluation (Sy-FAR §7), for any partition: plain numpy/PyTorch.

Group labels come from the configuration's ``eval.subgroups``: for each attribute either a
class -> group map (``{alice: F, bob: M, ...}``, keys class names or indices) or the word
``metadata`` (the dataset's own attributes: ``DataBundle.class_attributes`` when it has one
value per class, else ``DataBundle.test_attributes`` with one value per test sample).

- A **class-level** attribute partitions the classes, so Sy-FAR's subgroup matrix Ĉ (Def. 1)
  exists: per-group accuracy (class-balanced: the mean per-class accuracy of the group's
  classes), group gap, Ĉ and the group asymmetries |Ĉ_ab − Ĉ_ba| (``distfair.metrics.group_metrics``).
- A **per-sample** attribute (e.g. a speaker's gender when the classes are words) partitions
  the samples, not the classes: Ĉ is not defined; per-group accuracy (the fraction of the
  group's samples classified correctly) and the group gap are reported.

Independently of any attribute, every evaluation gets ``max_bipartition_asym``: the largest
group asymmetry over all bipartitions of the classes (exact, ``distfair.metrics``), with
the worst bipartition recorded in the report.

A group with no sample in the evaluation (all its classes absent from the test set, or left
out of a fixed-target evaluation) is reported as absent, as an absent class is: a
``UserWarning`` names it, its metrics are ``None`` (not logged) and the gap and asymmetries
are taken over the other groups. It never raises after training.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from distfair.data import DataBundle
from distfair.metrics import group_metrics, max_bipartition_asym

METADATA = "metadata"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]")


def metric_safe(name: str) -> str:
    """A group or attribute name usable inside an MLflow metric key."""
    return _UNSAFE.sub("_", str(name)) or "_"


@dataclass(frozen=True)
class Grouping:
    attribute: str
    kind: str                 # "class" (labels per class) or "sample" (labels per test sample)
    labels: np.ndarray        # group index per class or per test sample
    names: list[str]          # group names, index order


def _encode(values: list[str], attribute: str, what: str) -> Grouping:
    names = sorted(set(values))
    if len(names) < 2:
        raise ValueError(f"eval.subgroups.{attribute}: needs at least 2 groups, got {names}")
    safe = [metric_safe(n) for n in names]
    if len(set(safe)) != len(safe):
        raise ValueError(f"eval.subgroups.{attribute}: group names {names} collide once made metric-safe ({safe})")
    index = {n: i for i, n in enumerate(names)}
    return Grouping(attribute, what, np.array([index[v] for v in values], dtype=int), names)


def resolve_groupings(spec: dict, data: DataBundle) -> list[Grouping]:
    """``eval.subgroups`` resolved against the dataset; ValueError naming the key on a gap."""
    out = []
    for attribute, source in (spec or {}).items():
        if source == METADATA:
            if attribute in data.class_attributes:
                out.append(_encode([str(v) for v in data.class_attributes[attribute]], attribute, "class"))
            elif attribute in data.test_attributes:
                values = [str(v) for v in data.test_attributes[attribute]]
                if len(values) != len(data.test):
                    raise ValueError(f"eval.subgroups.{attribute}: the dataset gives {len(values)} values "
                                     f"for {len(data.test)} test samples")
                out.append(_encode(values, attribute, "sample"))
            else:
                known = sorted(set(data.class_attributes) | set(data.test_attributes))
                raise ValueError(f"eval.subgroups.{attribute}: the dataset has no attribute {attribute!r}; "
                                 f"it has: {', '.join(known) or 'none'}")
            continue
        names = list(data.class_names) or [str(i) for i in range(data.num_classes)]
        by_class: dict[int, str] = {}
        for key, group in source.items():
            if isinstance(key, int) and 0 <= key < data.num_classes:
                idx = key
            elif str(key) in names:
                idx = names.index(str(key))
            else:
                raise ValueError(f"eval.subgroups.{attribute}.{key}: not a class of the dataset "
                                 f"(classes: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''})")
            if idx in by_class:
                raise ValueError(f"eval.subgroups.{attribute}.{key}: class {names[idx]!r} is mapped twice")
            by_class[idx] = str(group)
        missing = [names[i] for i in range(data.num_classes) if i not in by_class]
        if missing:
            raise ValueError(f"eval.subgroups.{attribute}: classes without a group: {', '.join(missing[:20])}")
        out.append(_encode([by_class[i] for i in range(data.num_classes)], attribute, "class"))
    return out


def _sample_group_metrics(correct: np.ndarray, grouping: Grouping, included: np.ndarray | None = None,
                          rejected: np.ndarray | None = None) -> dict:
    acc, rejection = {}, {}
    for g, name in enumerate(grouping.names):
        members = grouping.labels == g
        if included is not None:
            members = members & included
        acc[name] = float(correct[members].mean()) if members.any() else None
        if rejected is not None:
            rejection[name] = float(rejected[members].mean()) if members.any() else None
    empty = [name for name, v in acc.items() if v is None]
    if empty:
        warnings.warn(f"subgroups: groups {empty} of attribute {grouping.attribute!r} have no samples in this "
                      "evaluation; they are left out of the subgroup metrics", UserWarning, stacklevel=3)
    present = [v for v in acc.values() if v is not None]
    out = {"group_acc": acc, "group_gap": max(present) - min(present) if len(present) >= 2 else None}
    if rejected is not None:
        out["group_rejection"] = rejection
    return out


def _class_group_rejection(counts: np.ndarray, abstained: np.ndarray, grouping: Grouping) -> dict:
    """Group -> abstained samples / all samples of the group's classes (None: no sample)."""
    totals = np.asarray(counts, dtype=float).sum(axis=1) + abstained
    out = {}
    for g, name in enumerate(grouping.names):
        members = grouping.labels == g
        total = totals[members].sum()
        out[name] = float(abstained[members].sum() / total) if total > 0 else None
    return out


def subgroup_report(groupings: list[Grouping], counts: np.ndarray, correct: np.ndarray | None,
                    class_names: list[str], included: np.ndarray | None = None, *,
                    abstained: np.ndarray | None = None,
                    rejected: np.ndarray | None = None) -> tuple[dict[str, float | None], dict]:
    """Metrics (flat keys, for one evaluation) and the JSON report of one evaluation.

    ``counts``: its K×K confusion counts; ``correct``: (N,) per-sample correctness in test-set
    order (needed only for per-sample attributes); ``included``: optional (N,) bool, the
    samples that belong to this evaluation (a fixed-target evaluation leaves the target
    class's samples out; their rows of ``counts`` are then zero too). Metric keys:
    ``max_bipartition_asym``, ``group_acc/<attr>/<group>``, ``group_gap/<attr>``, and for
    class-level attributes ``max_group_asym/<attr>``. A group without samples gets ``None``
    and a ``UserWarning`` (Sy-FAR §7 defines Ĉ only for groups with classes; see the module).

    Abstentions (a predictor that can abstain): ``abstained`` (K,) abstentions per true
    class (not in ``counts``; zero for left-out classes) and ``rejected`` (N,) per-sample
    abstention flags. They count in every class and group total and as not correct, and add
    ``group_rejection/<attr>/<group>``: the fraction of the group's samples abstained on
    (sample-weighted for class-level and per-sample attributes alike; on clean data this is
    the group's false-rejection rate).
    """
    names = list(class_names) or [str(i) for i in range(len(counts))]
    abst = None if abstained is None else np.asarray(abstained, dtype=float)
    try:
        bip = max_bipartition_asym(counts, abstained=abst)
        bip["partition_names"] = [[names[i] for i in side] for side in bip["partition"]]
    except ValueError:           # fewer than 2 classes present in the evaluation set
        bip = {"value": None, "exact": True, "upper_bound": None, "partition": None, "partition_names": None}
    metrics: dict[str, float | None] = {"max_bipartition_asym": bip["value"]}
    report: dict = {"max_bipartition_asym": bip, "attributes": {}}
    for grouping in groupings:
        attr = metric_safe(grouping.attribute)
        if grouping.kind == "class":
            result = group_metrics(counts, grouping.labels.tolist(), [metric_safe(n) for n in grouping.names],
                                   empty="omit", abstained=abst)
            result["group_acc"] = dict(zip(grouping.names, result["group_acc"].values()))
            metrics[f"max_group_asym/{attr}"] = result["max_group_asym"]
            result["classes"] = {g: [names[i] for i in np.flatnonzero(grouping.labels == k)]
                                 for k, g in enumerate(grouping.names)}
        else:
            if correct is None:
                raise ValueError(f"subgroups: attribute {grouping.attribute!r} needs per-sample results")
            result = _sample_group_metrics(np.asarray(correct, dtype=bool), grouping,
                                           None if included is None else np.asarray(included, dtype=bool),
                                           None if abst is None else np.asarray(rejected, dtype=bool))
        result["kind"] = grouping.kind
        for group, acc in result["group_acc"].items():
            metrics[f"group_acc/{attr}/{metric_safe(group)}"] = acc
        metrics[f"group_gap/{attr}"] = result["group_gap"]
        if abst is not None:
            if grouping.kind == "class":
                result["group_rejection"] = _class_group_rejection(counts, abst, grouping)
            for group, rate in result["group_rejection"].items():
                metrics[f"group_rejection/{attr}/{metric_safe(group)}"] = rate
        report["attributes"][grouping.attribute] = result
    return metrics, report
