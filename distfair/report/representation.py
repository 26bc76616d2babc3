"""Training-set representation against false rejection per group (speech paper 003 §5.2.2), a
part of ``distfair analyze``'s meta-analysis (:mod:`distfair.report.meta_analysis`).

§5.2.2: "we investigate if having a higher subgroup representation in the training set
results in higher AUC_FPR. Here we seek to measure the correlation between the size of subgroup
training data |X_train,s| where s is the subgroup. We find a correlation coefficient with
AUC_FPR for each subgroup with the NR method [gender 0.691, age -0.318, accent -0.044] [...]
For RS [...] a correlation of -0.499 ± 0.08 (averaged over all sampling). For each subgroup,
we see -0.811 ± 0.16 for gender, -0.430 ± 0.144 for age, and -0.652 ± 0.216 for accent."

So the points are the **groups** of one attribute of one model, not configurations:

* per analysed configuration and attribute, x = the group's training-set size
  ``group_train_n/<attr>/<group>`` (logged by the run, ``distfair.evaluation.group_sizes``) and
  y = its ``group_auc_fpr/<attr>/<group>`` (:data:`REPRESENTATION_METRICS`), each the mean over
  the configuration's kept seed runs (as the parity metrics of the §5.1 meta-analysis); a
  group with either value missing takes no part;
* :data:`ALL_ATTRIBUTES`: the same over the groups of every attribute of the configuration
  together (the paper's "-0.499", one number per model before averaging), when it has at least
  two attributes;
* across configurations (the paper's "averaged over all sampling"), per attribute, the mean
  and sample std of the defined per-configuration r's: descriptive, no interval.

Statistics are the meta-analysis's own (:func:`distfair.report.meta_analysis.pearson`): Pearson
r with its two-sided p and 95% Fisher-z interval (none for fewer than 4 groups: the paper's
gender r rests on 3 points), undefined (with the reason, never NaN) for fewer than 3 groups or
a constant size or AUC_FPR; Spearman's rank correlation (``scipy.stats.spearmanr``) beside it
as a check on a relation that need not be linear, not tested. The Pearson p's join the
analysis's one Holm family (``analyze`` adjusts them together with the intervention
correlations), so ``significant`` here means what it means there.

Pure computation (numpy/scipy): no MLflow, no Ray.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from distfair.metrics import summarize

#: the per-group training-set size the runs log (``group_train_n/<attr>/<group>``)
TRAIN_SIZE = "group_train_n"
#: per-group metric family correlated with the training-set size -> meaning
REPRESENTATION_METRICS: dict[str, str] = {
    "group_auc_fpr": "AUC_FPR of the group (§3.2, Eq. 2): its false rejections over the threshold grid",
}
#: the attribute label of the correlation over the groups of every attribute of a configuration
ALL_ATTRIBUTES = "all_attributes"


@dataclass
class RepresentationCorrelation:
    """One configuration's correlation, over the groups of ``attribute``, between the groups'
    training-set sizes and ``metric`` (seed means): ``groups`` group -> {"train_n", "value"};
    ``pearson``: :class:`distfair.report.meta_analysis.Pearson`; Spearman's rho and p beside it
    (None where undefined); ``p_holm``/``significant`` set by the analysis's Holm correction."""
    metric: str
    attribute: str
    run_id: str
    name: str
    groups: dict
    pearson: object
    spearman_rho: float | None = None
    spearman_p: float | None = None
    p_holm: float | None = None
    significant: bool = False

    @property
    def key(self) -> str:
        return f"{self.metric}/{self.attribute}/{self.run_id}"

    def to_json(self) -> dict:
        p = self.pearson
        return {"metric": self.metric, "attribute": self.attribute, "run_id": self.run_id, "name": self.name,
                "r": p.r, "p": p.p, "n": p.n, "ci95_low": p.ci95_low, "ci95_high": p.ci95_high, "p_holm": self.p_holm,
                "significant": self.significant, "undefined": p.undefined, "spearman_rho": self.spearman_rho,
                "spearman_p": self.spearman_p, "groups": self.groups}


def _value(metrics: Mapping[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _group_means(seed_metrics: Mapping[int, Mapping[str, float]], family: str) -> dict[str, dict[str, float]]:
    """attribute -> group -> the seed mean of ``<family>/<attr>/<group>`` (seeds that logged it)."""
    prefix = f"{family}/"
    values: dict[tuple[str, str], list[float]] = {}
    for metrics in seed_metrics.values():
        for key in metrics:
            if key.startswith(prefix) and key.count("/") == 2 and (v := _value(metrics, key)) is not None:
                attr, group = key[len(prefix):].split("/")
                values.setdefault((attr, group), []).append(v)
    out: dict[str, dict[str, float]] = {}
    for (attr, group), vs in sorted(values.items()):
        out.setdefault(attr, {})[group] = float(np.mean(vs))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """``scipy.stats.spearmanr`` (rho, two-sided p); (None, None) when not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    rho, p = float(result.statistic), float(result.pvalue)
    return (rho, p) if math.isfinite(rho) and math.isfinite(p) else (None, None)


def representation_correlations(kept: Sequence[dict], pearson: Callable, *,
                                metrics: Mapping[str, str] = REPRESENTATION_METRICS) -> list[RepresentationCorrelation]:
    """The §5.2.2 correlations of the analysed configurations ``kept`` (dicts with ``run_id``,
    ``name``, ``seed_metrics`` {seed: metrics}); ``pearson(x, y, x_name=, y_name=)`` is the
    meta-analysis's. Configurations that logged no training-set size or no ``metric`` give none."""
    out: list[RepresentationCorrelation] = []
    for config in kept:
        sizes = _group_means(config["seed_metrics"], TRAIN_SIZE)
        for metric in metrics:
            values = _group_means(config["seed_metrics"], metric)
            attributes = [a for a in sorted(sizes) if a in values]
            blocks = {a: {g: {"train_n": sizes[a][g], "value": values[a][g]}
                          for g in sorted(sizes[a]) if g in values[a]} for a in attributes}
            if len(attributes) >= 2 and ALL_ATTRIBUTES not in blocks:
                blocks[ALL_ATTRIBUTES] = {f"{a}/{g}": v for a in attributes for g, v in blocks[a].items()}
            for attribute, groups in blocks.items():
                xs = [v["train_n"] for v in groups.values()]
                ys = [v["value"] for v in groups.values()]
                result = pearson(xs, ys, x_name="the training-set size", y_name=metric)
                rho, p = spearman(xs, ys) if result.r is not None else (None, None)
                out.append(RepresentationCorrelation(metric, attribute, config["run_id"], config["name"], groups,
                                                     result, rho, p))
    return out


def across_configurations(correlations: Sequence[RepresentationCorrelation]) -> dict[str, dict]:
    """``<metric>/<attribute>`` -> the mean and sample std (``distfair.metrics.summarize``) of
    the defined per-configuration r's and how many there are (the paper's "± over sampling")."""
    rs: dict[str, list[float]] = {}
    for c in correlations:
        rs.setdefault(f"{c.metric}/{c.attribute}", [])
        if c.pearson.r is not None:
            rs[f"{c.metric}/{c.attribute}"].append(c.pearson.r)
    out = {}
    for key, values in rs.items():
        spread = summarize(values)
        out[key] = {"n": spread["n"], "mean": spread["mean"], "std": spread["std"]}
    return out
