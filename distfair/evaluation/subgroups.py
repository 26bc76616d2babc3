"""Subgroup fairness of one evaluation (Sy-FAR §7), for any partition: plain numpy/PyTorch.

Group labels come from the configuration's ``eval.subgroups`` (its forms and defaults:
``distfair.evaluation.subgroup_spec``): for each attribute either a class -> group map
(``{alice: F, bob: M, ...}``, keys class names or indices) or the dataset's own attribute
(``metadata``, or ``{source: metadata, exclude: [...], min_group_size: <n>, size_by: ...}``,
or ``{intersect: [gender, accent, ...], ...}`` for the groups of several attributes at once,
named ``female|us``): ``DataBundle.class_attributes`` when it has one value per class, else
``DataBundle.test_attributes`` with one value per test sample.

- A **class-level** attribute partitions the classes, so Sy-FAR's subgroup matrix Ĉ (Def. 1)
  exists: per-group accuracy (class-balanced: the mean per-class accuracy of the group's
  classes), group gap, Ĉ and the group asymmetries |Ĉ_ab − Ĉ_ba| (``distfair.metrics.group_metrics``).
- A **per-sample** attribute (e.g. a speaker's gender when the classes are words) partitions
  the samples, not the classes: Ĉ is not defined; per-group accuracy (the fraction of the
  group's samples classified correctly) and the group gap are reported.

Every group's ``n`` (its samples in the evaluation, abstentions included) is reported beside
its accuracy: ``group_n/<attr>/<group>``.

**Left-out groups.** A metadata group is left out when its value is in ``exclude`` (default
"unknown" and empty: missing metadata is not a group) or when it has fewer than
``min_group_size`` members, counted once per split, over the split's samples before any
evaluation leaves some out, in samples or in distinct ``size_by`` values (e.g. speakers). Its
samples (for a class-level attribute: its classes) then belong to no group (label -1): they
count in every overall metric but in no group metric, gap, asymmetry or parity (AUC_acc,
AUC_FPR). Each evaluation's report lists them (``left_out``: group -> reason and size) and a
``UserWarning`` names them. Resolution raises only on a configuration problem (an unknown
attribute, fewer than 2 values before leaving out), which the configuration check finds
before training.

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
from dataclasses import dataclass, field

import numpy as np

from distfair.data import DataBundle
from distfair.evaluation.subgroup_spec import METADATA, SAMPLES, excluded_matcher, metadata_options
from distfair.metrics import group_metrics, max_bipartition_asym

__all__ = ["METADATA", "Grouping", "metric_safe", "resolve_groupings", "subgroup_report"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]")
#: what joins the values of an intersectional group (``female|us``; ``female_us`` in metric keys)
INTERSECT_SEPARATOR = "|"
#: the stand-in group of a class-level attribute's left-out classes inside ``group_metrics``
_REST = "(left out)"


def metric_safe(name: str) -> str:
    """A group or attribute name usable inside an MLflow metric key."""
    return _UNSAFE.sub("_", str(name)) or "_"


@dataclass(frozen=True)
class Grouping:
    attribute: str
    kind: str                 # "class" (labels per class) or "sample" (labels per test sample)
    labels: np.ndarray        # group index per class or per test sample; -1: in no group (left out)
    names: list[str]          # the groups kept, index order
    #: left-out group -> {"reason": "excluded" | "min_group_size", "size": its size or None}
    left_out: dict = field(default_factory=dict)
    #: kept group -> its size in ``size_by`` units over the split (None: not counted)
    sizes: dict = field(default_factory=dict)
    size_by: str = SAMPLES
    min_group_size: int = 1
    #: the dataset attributes a metadata grouping reads (several for ``intersect``, joined by
    #: :data:`INTERSECT_SEPARATOR`); empty for a class -> group map
    components: tuple = ()

    def describe(self) -> dict:
        """What the report records about the grouping beside the metrics."""
        return {"left_out": dict(self.left_out), "sizes": dict(self.sizes), "size_by": self.size_by,
                "min_group_size": self.min_group_size}


def _encode(values: list[str], attribute: str, what: str) -> Grouping:
    names = sorted(set(values))
    if len(names) < 2:
        raise ValueError(f"eval.subgroups.{attribute}: needs at least 2 groups, got {names}")
    _check_safe(names, attribute)
    index = {n: i for i, n in enumerate(names)}
    return Grouping(attribute, what, np.array([index[v] for v in values], dtype=int), names)


def _check_safe(names: list[str], attribute: str) -> None:
    safe = [metric_safe(n) for n in names]
    if len(set(safe)) != len(safe):
        raise ValueError(f"eval.subgroups.{attribute}: group names {names} collide once made metric-safe ({safe})")


def resolve_groupings(spec: dict, data: DataBundle) -> list[Grouping]:
    """``eval.subgroups`` resolved against the dataset; ValueError naming the key on a gap."""
    out = []
    for attribute, source in (spec or {}).items():
        options = metadata_options(source)
        out.append(_class_map(attribute, source, data) if options is None
                   else _metadata_grouping(attribute, options, data))
    return out


def _class_map(attribute: str, source: dict, data: DataBundle) -> Grouping:
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
    return _encode([by_class[i] for i in range(data.num_classes)], attribute, "class")


def dataset_labels(ds) -> np.ndarray | None:
    """A data set's classes when it exposes them without loading a sample (``targets``, a
    ``TensorDataset``'s second tensor, a ``Subset`` of either); else None."""
    targets = getattr(ds, "targets", None)
    if targets is None and len(getattr(ds, "tensors", ())) >= 2:
        targets = ds.tensors[1]
    if targets is None and hasattr(ds, "dataset") and hasattr(ds, "indices"):
        inner = dataset_labels(ds.dataset)
        return None if inner is None else inner[np.asarray(ds.indices, dtype=int)]
    labels = None if targets is None else np.asarray(targets, dtype=int).reshape(-1)
    return labels if labels is not None and len(labels) == len(ds) else None


def _test_labels(data: DataBundle) -> np.ndarray | None:
    """The test samples' classes (:func:`dataset_labels`)."""
    return dataset_labels(data.test)


def _attribute_values(name: str, data: DataBundle, key: str) -> tuple[str, list[str]]:
    """("class", one value per class) or ("sample", one value per test sample)."""
    if name in data.class_attributes:
        values = [str(v) for v in data.class_attributes[name]]
        if len(values) != data.num_classes:
            raise ValueError(f"{key}: the dataset gives {len(values)} values of {name!r} for {data.num_classes} classes")
        return "class", values
    if name in data.test_attributes:
        values = [str(v) for v in data.test_attributes[name]]
        if len(values) != len(data.test):
            raise ValueError(f"{key}: the dataset gives {len(values)} values of {name!r} "
                             f"for {len(data.test)} test samples")
        return "sample", values
    known = sorted(set(data.class_attributes) | set(data.test_attributes))
    raise ValueError(f"{key}: the dataset has no attribute {name!r}; it has: {', '.join(known) or 'none'}")


def _metadata_grouping(attribute: str, options: dict, data: DataBundle) -> Grouping:
    """A metadata attribute (or the intersection of several), with its left-out groups."""
    key = f"eval.subgroups.{attribute}"
    components = options.get("intersect") or [attribute]
    where = f"{key}.intersect" if "intersect" in options else key
    columns = [_attribute_values(name, data, where) for name in components]
    size_rule = options["min_group_size"] > 1 or options["size_by"] != SAMPLES
    labels = _test_labels(data) if size_rule or any(k == "class" for k, _ in columns) else None
    kind = "class" if all(k == "class" for k, _ in columns) else "sample"
    if kind == "sample" and any(k == "class" for k, _ in columns):
        if labels is None:
            raise ValueError(f"{where}: crossing class-level with per-sample attributes needs the test "
                             "samples' classes, which this test set does not expose (no 'targets')")
        columns = [(k, [vals[c] for c in labels] if k == "class" else vals) for k, vals in columns]
    combos = list(zip(*(vals for _, vals in columns)))
    values = [INTERSECT_SEPARATOR.join(c) for c in combos]
    names = sorted(set(values))
    if len(names) < 2:
        raise ValueError(f"{key}: needs at least 2 groups, got {names}")
    # one value per member: per test sample, or per class (then mapped to samples when counted)
    per_sample = values if kind == "sample" else (None if labels is None else [values[c] for c in labels])
    if size_rule and per_sample is None:
        raise ValueError(f"{key}: min_group_size and size_by count a class-level attribute's groups over the "
                         "test samples, whose classes this test set does not expose (no 'targets')")
    units = per_sample
    if options["size_by"] != SAMPLES:
        if options["size_by"] not in data.test_attributes:
            raise ValueError(f"{key}.size_by: the dataset has no per-sample attribute {options['size_by']!r}; "
                             f"per-sample attributes: {', '.join(sorted(data.test_attributes)) or 'none'}")
        units = [str(v) for v in data.test_attributes[options["size_by"]]]
        if len(units) != len(data.test):
            raise ValueError(f"{key}.size_by: the dataset gives {len(units)} values of {options['size_by']!r} "
                             f"for {len(data.test)} test samples")
    sizes = None
    if per_sample is not None:
        members: dict[str, set] = {n: set() for n in names}
        for i, (group, unit) in enumerate(zip(per_sample, units)):
            members[group].add(unit if options["size_by"] != SAMPLES else i)
        sizes = {n: len(m) for n, m in members.items()}
    excluded = excluded_matcher(options["exclude"])
    left_out = {}
    for name, combo in zip(values, combos):
        if name not in left_out and (name.strip().lower() in excluded
                                     or any(v.strip().lower() in excluded for v in combo)):
            left_out[name] = {"reason": "excluded", "size": None if sizes is None else sizes[name]}
    for name in names:
        if name not in left_out and sizes is not None and sizes[name] < options["min_group_size"]:
            left_out[name] = {"reason": "min_group_size", "size": sizes[name]}
    kept = [n for n in names if n not in left_out]
    _check_safe(kept, attribute)
    index = {n: i for i, n in enumerate(kept)}
    return Grouping(attribute, kind, np.array([index.get(v, -1) for v in values], dtype=int), kept,
                    left_out={n: left_out[n] for n in sorted(left_out)},
                    sizes={} if sizes is None else {n: sizes[n] for n in kept},
                    size_by=options["size_by"], min_group_size=options["min_group_size"],
                    components=tuple(components))


def _warn_left_out(grouping: Grouping) -> None:
    if grouping.left_out:
        parts = [f"{g} ({'excluded' if v['reason'] == 'excluded' else _size_text(grouping, v['size'])})"
                 for g, v in grouping.left_out.items()]
        warnings.warn(f"subgroups: groups of attribute {grouping.attribute!r} left out of the subgroup metrics: "
                      f"{', '.join(parts)}", UserWarning, stacklevel=3)


def _size_text(grouping: Grouping, size: int) -> str:
    unit = "samples" if grouping.size_by == SAMPLES else f"distinct {grouping.size_by} values"
    return f"size {size} ({unit}) < min_group_size {grouping.min_group_size}"


def _sample_group_metrics(correct: np.ndarray, grouping: Grouping, included: np.ndarray | None = None,
                          rejected: np.ndarray | None = None) -> dict:
    acc, rejection, n = {}, {}, {}
    for g, name in enumerate(grouping.names):
        members = grouping.labels == g
        if included is not None:
            members = members & included
        n[name] = int(members.sum())
        acc[name] = float(correct[members].mean()) if members.any() else None
        if rejected is not None:
            rejection[name] = float(rejected[members].mean()) if members.any() else None
    _warn_empty(grouping, [name for name, v in acc.items() if v is None])
    present = [v for v in acc.values() if v is not None]
    out = {"group_acc": acc, "n": n, "group_gap": max(present) - min(present) if len(present) >= 2 else None}
    if rejected is not None:
        out["group_rejection"] = rejection
    return out


def _warn_empty(grouping: Grouping, empty: list[str]) -> None:
    if empty:
        warnings.warn(f"subgroups: groups {empty} of attribute {grouping.attribute!r} have no samples in this "
                      "evaluation; they are left out of the subgroup metrics", UserWarning, stacklevel=4)


def _class_group_metrics(counts: np.ndarray, grouping: Grouping, abstained: np.ndarray | None) -> dict:
    """``group_metrics`` over the kept groups. The classes of left-out groups join one stand-in
    group for the call (so every row keeps its full normalisation: Ĉ_ab of two kept groups
    does not depend on the other groups), which is then dropped from every result."""
    kept = len(grouping.names)
    labels = np.asarray(grouping.labels).copy()
    rest = labels < 0
    totals = np.asarray(counts, dtype=float).sum(axis=1) + (0 if abstained is None else abstained)
    n = {name: int(round(totals[labels == g].sum())) for g, name in enumerate(grouping.names)}
    if kept == 0:
        return {"group_acc": {}, "n": {}, "group_gap": None, "group_asym": {}, "max_group_asym": None, "matrix": []}
    safe = [metric_safe(name) for name in grouping.names]
    if not rest.any():
        result = group_metrics(counts, labels.tolist(), safe, empty="omit", abstained=abstained)
        result["group_acc"] = dict(zip(grouping.names, result["group_acc"].values()))
        result["n"] = n
        return result
    labels[rest] = kept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = group_metrics(counts, labels.tolist(), safe + [_REST], empty="omit", abstained=abstained)
    for w in caught:                          # the absent-group warning is redone for the kept groups only
        if "have no class with samples" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=3)
    acc = {name: result["group_acc"][s] for name, s in zip(grouping.names, safe)}
    _warn_empty(grouping, [name for name, v in acc.items() if v is None])
    asym = {pair: v for pair, v in result["group_asym"].items() if _REST not in pair.split("|")}
    present = [v for v in acc.values() if v is not None]
    return {"group_acc": acc, "n": n, "group_gap": max(present) - min(present) if len(present) >= 2 else None,
            "group_asym": asym, "max_group_asym": max(asym.values()) if asym else None,
            "matrix": [row[:kept] for row in result["matrix"][:kept]]}


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
    ``max_bipartition_asym``, ``group_acc/<attr>/<group>``, ``group_n/<attr>/<group>`` (the
    group's samples in this evaluation, abstentions included), ``group_gap/<attr>``, and for
    class-level attributes ``max_group_asym/<attr>``. A group without samples gets ``None``
    (``n`` 0) and a ``UserWarning`` (Sy-FAR §7 defines Ĉ only for groups with classes; see
    the module). Left-out groups (``exclude``, ``min_group_size``) get no metric; the report
    lists them under ``left_out`` and a ``UserWarning`` names them.

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
        _warn_left_out(grouping)
        if grouping.kind == "class":
            result = _class_group_metrics(counts, grouping, abst)
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
        result.update(grouping.describe())
        for group, acc in result["group_acc"].items():
            metrics[f"group_acc/{attr}/{metric_safe(group)}"] = acc
            metrics[f"group_n/{attr}/{metric_safe(group)}"] = float(result["n"][group])
        metrics[f"group_gap/{attr}"] = result["group_gap"]
        if abst is not None:
            if grouping.kind == "class":
                result["group_rejection"] = _class_group_rejection(counts, abst, grouping)
            for group, rate in result["group_rejection"].items():
                metrics[f"group_rejection/{attr}/{metric_safe(group)}"] = rate
        report["attributes"][grouping.attribute] = result
    return metrics, report
