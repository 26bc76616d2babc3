"""A bootstrap over speakers (clusters) for the speech summaries' group areas and parities.

The speech paper (003, §4.1 and §5) measures groups of *speakers*: every speaker gives many
clips, so the clips of one group are not independent draws, and a group's AUC_acc (Eq. 1) or
AUC_FPR (Eq. 2) varies with which speakers happened to be in it far more than a per-clip
bootstrap says. This module gives each group metric and each parity a percentile interval
from a **clustered, group-stratified bootstrap**:

- the clusters are the distinct values of a per-sample attribute (``cluster_by``, default
  ``speaker``), or of a combination of several (``cluster_by: [accent, variant]``), taken
  within each group: a cluster is a (group, speaker) pair. The synthetic ``spoken_words`` set
  has no speakers: its held-out unit is ``voice``, and voices that share ``accent`` and
  ``variant`` share a timbre, so ``[accent, variant]`` is the more cautious unit there;
- one resample draws, independently in each group, as many of its speakers as it has, with
  replacement (stratified by group: every group keeps its number of speakers), and takes
  every clip of each drawn speaker, once per draw;
- the group metric is recomputed on the resample from per-speaker counts precomputed once: a
  group's value at one grid point (a budget ε, a threshold α) is a ratio of sums over its
  speakers, ``Σ_c w_c·hits_c / Σ_c w_c·size_c`` with ``w_c`` how often speaker c was drawn,
  and the area is the trapezoid rule's weighted sum over the grid, so a resample is a
  matrix product, never a pass over the clips. When a speaker's size does not change along
  the grid (AUC_FPR: every clean clip counts at every threshold) the area collapses to one
  ratio per resample, ``Σ_c w_c·a_c / Σ_c w_c·size_c`` with ``a_c`` the speaker's rejections
  integrated over the grid;
- a parity's resample is the largest minus the smallest group value of the same resample;
- the interval is the percentile interval of the resampled values at ``level`` (numpy's
  default linear quantiles), as in ``scipy.stats.bootstrap(method="percentile")``.

The resampling is by hand (``numpy.random.Generator.integers`` over the speakers of each
group) rather than ``scipy.stats.bootstrap``: SciPy resamples observations of each sample, and
here the observations are speakers carrying unequal numbers of clips, the groups' intervals
and the parity's must come from the same resamples, and a one-speaker group must be reported
as undefined rather than refused.

**Undefined intervals.** A group with a single speaker gets no interval: every resample
repeats that speaker, so the bootstrap would show a zero-width interval that says nothing
about other speakers; its bounds are None (not logged) and the document gives the reason. A
parity whose groups include a one-speaker group is undefined for the same reason. A resample
in which a group has no sample at some grid point (its drawn speakers have no clip in one
evaluation) has no value; such resamples are dropped and counted (``dropped``). A speaker
who belongs to two groups (a class-level attribute: one speaker says words of several
classes) is drawn independently in each, which ignores that dependence.

Options (``bootstrap`` below the summary's options; :data:`DEFAULTS`): ``resamples`` (1000;
0 turns the bootstrap off and costs nothing), ``cluster_by`` (``speaker``; a list: the
combination), ``level`` (0.95) and ``seed`` (0: each attribute's resampling starts from
``numpy.random.default_rng(seed)``, so the intervals are reproducible and do not depend on
which other attributes are evaluated; the document records it). Without the ``cluster_by``
attribute on the split (a dataset without speakers) there is no interval and the document's
``bootstrap.skipped`` says why. Plain numpy.
"""
from __future__ import annotations

import numbers

import numpy as np

from distfair.metrics import BOOTSTRAP_BOUNDS, bound_family

#: the options of ``eval.summaries.<auc_fpr|auc_acc>.bootstrap`` and their defaults
DEFAULTS = {"resamples": 1000, "cluster_by": "speaker", "level": 0.95, "seed": 0}
#: the largest number of resamples accepted
MAX_RESAMPLES = 100_000
METHOD = ("percentile interval of a clustered bootstrap: the cluster_by values (speakers) of each group "
          "resampled with replacement, stratified by group (every group keeps its number of speakers)")
ONE_CLUSTER = "a single {unit}: a resample can only repeat it, so the bootstrap says nothing about other {unit}s"


def bound_families(families: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The metric families of the interval ends of ``families`` (family -> its fields):
    ``{"fpr_parity": ("attribute",)}`` -> ``fpr_parity_lo`` and ``fpr_parity_hi``, same fields
    (``distfair.metrics.bound_family``)."""
    return {bound_family(f, end): fields for f, fields in families.items() for end in BOOTSTRAP_BOUNDS}


def check_options(value) -> list[tuple[str, str]]:
    """Problems of a ``bootstrap`` option as (key below the summary's options, message)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [("bootstrap", f"must be a mapping ({', '.join(f'{k}: {v}' for k, v in DEFAULTS.items())}), "
                              f"got {value!r}")]
    problems = [(f"bootstrap.{k}", f"unknown option; known: {', '.join(DEFAULTS)}") for k in value if k not in DEFAULTS]
    resamples = value.get("resamples", DEFAULTS["resamples"])
    if isinstance(resamples, bool) or not isinstance(resamples, int) or not 0 <= resamples <= MAX_RESAMPLES:
        problems.append(("bootstrap.resamples", f"must be an integer from 0 (off) to {MAX_RESAMPLES}, got {resamples!r}"))
    cluster_by = value.get("cluster_by", DEFAULTS["cluster_by"])
    names = cluster_by if isinstance(cluster_by, list) else [cluster_by]
    if not names or any(not isinstance(n, str) or not n or "/" in n for n in names) or len(set(names)) != len(names):
        problems.append(("bootstrap.cluster_by", f"must name a per-sample attribute (e.g. speaker) or list distinct "
                                                 f"ones (their combination is the cluster), got {cluster_by!r}"))
    level = value.get("level", DEFAULTS["level"])
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        problems.append(("bootstrap.level", f"must be a number strictly between 0 and 1, got {level!r}"))
    seed = value.get("seed", DEFAULTS["seed"])
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(("bootstrap.seed", f"must be a non-negative integer, got {seed!r}"))
    return problems


def resolve(value, attributes: dict, n: int) -> tuple[dict, np.ndarray | None, str | None]:
    """(the options with defaults, each sample's cluster id (None when off or unavailable), the
    reason there is none). ``attributes``: the split's per-sample attributes; ``n``: its samples."""
    opts = {**DEFAULTS, **(value or {})}
    if opts["resamples"] == 0:
        return opts, None, "off (resamples: 0)"
    names = opts["cluster_by"] if isinstance(opts["cluster_by"], list) else [opts["cluster_by"]]
    columns = []
    for name in names:
        values = (attributes or {}).get(name)
        if values is None:
            return opts, None, f"the dataset has no per-sample attribute {name!r} on this split"
        if len(values) != n:
            return opts, None, f"{name!r} has {len(values)} values for {n} samples"
        columns.append([str(v) for v in values])
    keys = ["\x1f".join(parts) for parts in zip(*columns)]
    _, ids = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    return opts, np.asarray(ids).reshape(-1), None


def unit_name(cluster_by) -> str:
    """What one cluster is called in the reasons: ``speaker``, ``(accent, variant) combination``."""
    return cluster_by if isinstance(cluster_by, str) else f"({', '.join(cluster_by)}) combination"


def record(opts: dict, reason: str | None) -> dict:
    """What the document says about the bootstrap."""
    cluster_by = list(opts["cluster_by"]) if isinstance(opts["cluster_by"], list) else opts["cluster_by"]
    return {"resamples": int(opts["resamples"]), "cluster_by": cluster_by, "level": float(opts["level"]),
            "seed": int(opts["seed"]), "method": METHOD, "skipped": reason}


def cluster_counts(clusters: np.ndarray, members: np.ndarray, hits: np.ndarray,
                   sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster of the ``members`` (N,) bool mask: the sum of ``hits`` (N, E) and of
    ``sizes`` (N,) or (N, E) over its samples, clusters in ascending id order, only those
    with a member: ((m, E), (m,) or (m, E))."""
    ids = clusters[members]
    _, local = np.unique(ids, return_inverse=True)
    m = int(local.max()) + 1 if local.size else 0

    def total(values):
        values = np.asarray(values, dtype=float)[members]
        out = np.zeros((m,) + values.shape[1:])
        np.add.at(out, local, values)
        return out

    return total(hits), total(sizes)


def resample_weights(rng: np.random.Generator, m: int, resamples: int) -> np.ndarray:
    """(resamples, m): how often each of ``m`` clusters is drawn in each resample of m draws."""
    draws = rng.integers(0, m, size=(resamples, m))
    flat = (draws + m * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * m).reshape(resamples, m).astype(float)


def group_statistic(weights: np.ndarray, hits: np.ndarray, sizes: np.ndarray, grid_weights: np.ndarray) -> np.ndarray:
    """The area of each resample: ``Σ_e grid_weights_e · (weights @ hits)_e / (weights @ sizes)_e``;
    NaN where a resample has no sample at some grid point. ``weights`` (B, m), ``hits`` (m, E),
    ``sizes`` (m,) (the same at every grid point) or (m, E)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if sizes.ndim == 1:                   # one ratio per resample: integrate each cluster first
            return (weights @ (hits @ grid_weights)) / (weights @ sizes)
        den = weights @ sizes
        value = ((weights @ hits) / den) @ grid_weights
        return np.where((den > 0).all(axis=1), value, np.nan)


def trapezoid_weights(x) -> np.ndarray:
    """The weights ``v`` with ``v @ y == numpy.trapezoid(y, x)`` for every ``y``."""
    x = np.asarray(x, dtype=float)
    d = np.diff(x)
    v = np.zeros_like(x)
    v[:-1] += d / 2
    v[1:] += d / 2
    return v


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` at ``level``."""
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_attribute(groups: dict[str, tuple[np.ndarray, np.ndarray]], grid_weights: np.ndarray, opts: dict
                        ) -> tuple[dict[str, dict], dict]:
    """Intervals of each group's area and of the parity (largest minus smallest group area).

    ``groups``: group -> its per-cluster (hits, sizes) (:func:`cluster_counts`), in the
    attribute's group order (the order the resamples are drawn in). Returns (group ->
    ``{"lo", "hi", "clusters", "dropped", "undefined"}``, the parity's
    ``{"lo", "hi", "undefined", "dropped"}``). ``undefined`` is None or the reason
    there is no interval (lo and hi are then None)."""
    rng = np.random.default_rng(int(opts["seed"]))
    resamples, level, unit = int(opts["resamples"]), float(opts["level"]), unit_name(opts["cluster_by"])
    out, draws = {}, {}
    for group, (hits, sizes) in groups.items():
        m = len(sizes)
        info = {"lo": None, "hi": None, "clusters": m, "dropped": 0, "undefined": None}
        if m < 2:
            info["undefined"] = ONE_CLUSTER.format(unit=unit) if m == 1 else f"no {unit}"
        else:
            stats = group_statistic(resample_weights(rng, m, resamples), hits, sizes, grid_weights)
            draws[group] = stats
            finite = stats[np.isfinite(stats)]
            info["dropped"] = int(resamples - finite.size)
            if finite.size:
                info["lo"], info["hi"] = interval(finite, level)
            else:
                info["undefined"] = "no resample has a sample at every grid point"
        out[group] = info
    parity = {"lo": None, "hi": None, "dropped": 0, "undefined": None}
    single = [g for g, v in out.items() if v["undefined"]]
    if len(groups) < 2:
        parity["undefined"] = "fewer than 2 groups"
    elif single:
        parity["undefined"] = f"groups {single} have no interval ({out[single[0]]['undefined']})"
    else:
        stacked = np.stack([draws[g] for g in groups])
        ok = np.isfinite(stacked).all(axis=0)
        spread = stacked[:, ok].max(axis=0) - stacked[:, ok].min(axis=0)
        parity["dropped"] = int(resamples - spread.size)
        if spread.size:
            parity["lo"], parity["hi"] = interval(spread, level)
        else:
            parity["undefined"] = "no resample has every group at every grid point"
    return out, parity


def add_intervals(metrics: dict, attribute_doc: dict, counts: dict[str, tuple[np.ndarray, np.ndarray]],
                  grid_weights: np.ndarray, opts: dict, *, attr: str, group_family: str, parity_family: str) -> None:
    """Bootstrap one attribute (:func:`bootstrap_attribute`) and record it: the metrics
    ``<group_family>_lo/<attr>/<group>``, ``<group_family>_hi/...``, ``<parity_family>_lo/<attr>``
    and ``_hi`` (None where undefined), each group's ``interval`` and the attribute's
    ``<parity_family>_interval`` in ``attribute_doc``. ``counts``: the groups that have a value."""
    from distfair.evaluation.subgroups import metric_safe

    per_group, parity = bootstrap_attribute(counts, grid_weights, opts)
    for group, info in per_group.items():
        attribute_doc["groups"][group]["interval"] = info
        for end in BOOTSTRAP_BOUNDS:
            metrics[f"{bound_family(group_family, end)}/{attr}/{metric_safe(group)}"] = info[end]
    attribute_doc[f"{parity_family}_interval"] = parity
    for end in BOOTSTRAP_BOUNDS:
        metrics[f"{bound_family(parity_family, end)}/{attr}"] = parity[end]


def interval_text(info) -> str:
    """`` [lo, hi]`` of a document's interval for a figure's legend or title; ``""`` without one."""
    if not info or info.get("lo") is None:
        return ""
    return f" [{info['lo']:.3g}, {info['hi']:.3g}]"
