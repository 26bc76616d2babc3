"""The speech paper's meta-analysis: Pearson correlation between training interventions and
parity per attribute, across the configurations of an experiment (speech paper 003 §5.1, Figs.
2-5; methods.md "Speech equality study").

§5.1: "We use Pearson correlation to measure how security defenses have implications for the
fairness of performance across subgroups. We encode all defenses as a binary value (defense
applied or not) [...] We then analyze how varying levels of defense relate to defense parity."
Each configuration (one model of the paper's Tables 1-2) contributes one point per
(intervention, parity metric, attribute):

* **interventions** (:data:`INTERVENTIONS`), computed from the configuration's flat params
  (``attack.eps``, ``model.name``, the defense's options) and what its defense declares
  (:class:`DefenseTraits`: ``Defense.adversarial_training``, the options holding its
  adversarial weight and its noise σ), handed in by the caller, which reads the defense
  classes (this layer does not import them): binary ``at``, ``tricks``, ``noise`` (Figs. 2
  and 4) and the levels ``budget`` (ε) and ``sigma`` (σ) (Figs. 3 and 5);
* **parity metrics** (:data:`PARITY_METRICS`), per attribute: the mean over the
  configuration's kept seed runs of ``<metric>/<attribute>``. Every one is a largest
  difference between an attribute's groups, so a positive r means the intervention goes with
  *more disparity* (the paper's reading of its figures).

**Chance-level exclusion** (§4.2: "we remove any model from the analysis that performs random
guessing on the evaluation set"; §5.1.1, §5.1.2): seed runs at chance are left out, and a
configuration left with no seed run is excluded. The rules (:data:`CHANCE_RULES`: ``"majority"``,
the default, which reproduces the paper's 15/40 and 6/40, and ``"binomial"``), chosen with
``chance_rule`` (``distfair analyze --chance-rule``), and the clean counts they judge are
:mod:`distfair.report.chance`; a seed run without those counts cannot be tested and is kept,
and the output says so.

**Statistics**: the point estimate is ``scipy.stats.pearsonr`` over the configurations of the
seed-mean metric (r, two-sided p, n = configurations with the metric), with its 95% **Fisher-z
interval** ``tanh(atanh(r) ∓ z_{0.975} / sqrt(n - 3))`` (the interval
``scipy.stats.pearsonr(...).confidence_interval()`` gives; none for n < 4; approximate for a
binary intervention, which is not normal). **Holm's step-down correction** (statsmodels
``multipletests(method="holm")``) runs over every defined correlation of one analysis (all
parity metrics, attributes and interventions together), giving ``p_holm`` and ``significant``
(``p_holm`` < :data:`SIGNIFICANCE`): only those should be claimed. The per-seed-set r's (seed s
of every configuration that kept it) are reported as a description of seed sensitivity only
(mean, sample std, per seed), with no interval: seed indices are unrelated across
configurations, and a t-interval over 2-3 such r's (df = 1-2) says little. A constant
intervention or metric (e.g. no configuration has noise), or fewer than 3 points, gives no r:
it is *undefined*, with the reason, never NaN.

Pure computation (numpy/scipy, Holm through statsmodels, figures through
``distfair.plotting``): no MLflow, no Ray. The command ``distfair analyze`` reads the runs
(``distfair.tracking``) and logs the result.
The interventions are :mod:`distfair.report.interventions`; the printed and written forms
:mod:`distfair.report.meta_analysis_output`. Beside the §5.1 correlations, the analysis holds
§5.2.2's correlation between each group's training-set size and its AUC_FPR, per configuration
and attribute over the groups (:mod:`distfair.report.representation`: ``Analysis.representation``);
their Pearson p's are in the same Holm family.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from distfair.metrics import summarize
from distfair.report.chance import (CHANCE_ALPHA, CHANCE_RULES, DEFAULT_CHANCE_RULE, ChanceTest,  # noqa: F401
                                    CleanCounts, chance_test, chance_verdict, clean_counts, majority_test)
from distfair.report.interventions import (INTERVENTIONS, TRICKS_MODELS, DefenseTraits, Intervention,  # noqa: F401
                                           adversarial_training, declared_traits, intervention_values,
                                           noise_sigma)
from distfair.report.representation import (RepresentationCorrelation, across_configurations,
                                            representation_correlations)

#: family-wise significance level of the Holm-corrected correlations of one analysis
SIGNIFICANCE = 0.05
#: the level of the Fisher-z interval of r
CONFIDENCE = 0.95
#: fewer points than this give no correlation (two points always lie on a line)
MIN_POINTS = 3

#: parity metric family (logged per attribute as ``<family>/<attr>`` on each seed run) -> meaning.
#: Every one is a largest difference between groups: larger = more disparity.
PARITY_METRICS: dict[str, str] = {
    "defense_parity": "Defense Parity: largest AUC_acc difference between the attribute's groups (§3.1, Eq. 1)",
    "clean_group_gap": "Accuracy Parity: largest clean-accuracy difference between the attribute's groups (§3.1)",
    "fpr_parity": "FPR parity: largest AUC_FPR difference between the attribute's groups (§3.2, rejection)",
}


# ------------------------------------------------------------------------------- correlation
@dataclass(frozen=True)
class Pearson:
    """``scipy.stats.pearsonr`` of n points, or ``undefined`` (the reason) with r and p None;
    ``ci95_low``/``ci95_high``: the Fisher-z interval (None for n < 4 or undefined r)."""
    r: float | None
    p: float | None
    n: int
    undefined: str | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None


def fisher_interval(r: float, n: int, level: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Fisher-z confidence interval of a Pearson r of n points:
    ``tanh(atanh(r) ∓ z_{(1+level)/2} / sqrt(n - 3))`` (``scipy.stats.norm``); None for n < 4.
    |r| = 1 gives the point [r, r]."""
    if n < 4:
        return None
    if abs(r) >= 1.0:
        return float(np.sign(r)), float(np.sign(r))
    z = math.atanh(r)
    half = float(stats.norm.ppf((1 + level) / 2)) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979; statsmodels ``multipletests(method="holm")``):
    the i-th smallest p times (m - i + 1), made non-decreasing in that order and capped at 1."""
    if len(p_values) == 0:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


def pearson(x: Sequence[float], y: Sequence[float], *, x_name: str = "x", y_name: str = "y") -> Pearson:
    """Pearson r, its two-sided p-value and its Fisher-z 95% interval; undefined for fewer than 3
    points or a constant ``x`` or ``y`` (no variance: r is 0/0), never NaN."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    if n < MIN_POINTS:
        return Pearson(None, None, n, f"only {n} point(s); a correlation needs at least {MIN_POINTS}")
    for name, values in ((x_name, xs), (y_name, ys)):
        if np.all(values == values[0]):
            return Pearson(None, None, n, f"{name} is constant ({values[0]:.4g}) over all {n} points")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # near-constant input: scipy warns, the value stands
        result = stats.pearsonr(xs, ys)
    r, p = float(result.statistic), float(result.pvalue)
    if not (math.isfinite(r) and math.isfinite(p)):
        return Pearson(None, None, n, f"{x_name} or {y_name} has too little variance for a correlation")
    interval = fisher_interval(r, n)
    return Pearson(r, p, n, None, *(interval or (None, None)))


# ------------------------------------------------------------------------------------ inputs
@dataclass
class SeedInput:
    """One FINISHED seed run: its final metrics and the clean counts of the chance rule."""
    seed: int
    run_id: str
    metrics: Mapping[str, float]
    counts: CleanCounts | None = None               # of the clean test evaluation
    counts_missing: str | None = None               # why ``counts`` is None


@dataclass
class ConfigurationInput:
    """One configuration run: its flat params, its FINISHED seed runs and what its defense
    declares (:class:`DefenseTraits`, read from the defense class by the caller)."""
    run_id: str
    name: str
    params: Mapping[str, object]
    seeds: list[SeedInput] = field(default_factory=list)
    defense: DefenseTraits = DefenseTraits()


# ----------------------------------------------------------------------------------- result
@dataclass
class Correlation:
    parity: str
    intervention: str
    attribute: str
    pearson: Pearson
    #: per seed set (descriptive only): "seeds", "r" {seed: r or None}, "undefined" {seed: reason},
    #: "n" (defined r's) and their "mean", "std" (None where undefined)
    seed_sets: dict
    #: Holm-adjusted p over the defined correlations of the analysis (None where r is undefined)
    p_holm: float | None = None
    significant: bool = False

    @property
    def key(self) -> str:
        return f"{self.parity}/{self.intervention}/{self.attribute}"


@dataclass
class Analysis:
    parity_metrics: list[str]
    interventions: dict[str, Intervention]
    attributes: dict[str, list[str]]               # parity metric -> attributes found
    configurations: list[dict]                     # analysed: run_id, name, interventions, seeds, means
    excluded: list[dict]                           # run_id, name, reason ("chance", "no_seeds", "params"), detail
    seed_runs_at_chance: list[dict]                # run_id, name, seed, seed_run_id, test
    seed_runs_untested: list[dict]                 # run_id, name, seed, seed_run_id, reason
    correlations: list[Correlation]
    missing_metrics: list[str]                     # asked for but recorded by no analysed configuration
    alpha: float = CHANCE_ALPHA
    n_found: int = 0
    chance_rule: str = DEFAULT_CHANCE_RULE
    #: §5.2.2: per configuration and attribute, training-set size vs AUC_FPR over the groups
    representation: list[RepresentationCorrelation] = field(default_factory=list)

    @property
    def n_excluded_chance(self) -> int:
        return sum(e["reason"] == "chance" for e in self.excluded)

    @property
    def n_holm(self) -> int:
        """The size of the Holm family: the defined correlations (§5.1 and §5.2.2 together)."""
        return sum(c.p_holm is not None for c in [*self.correlations, *self.representation])

    def chance_rule_text(self) -> str:
        if self.chance_rule == "binomial":
            return (f"binomial: a seed run is at chance when binomtest(correct, n, 1/K, alternative='greater') "
                    f"has p >= {self.alpha}")
        return f"{self.chance_rule}: {CHANCE_RULES[self.chance_rule]}"

    def mlflow_metrics(self) -> dict[str, float]:
        """Counts, then per correlation ``pearson_r|pearson_p|pearson_n|pearson_ci95_low|
        pearson_ci95_high|pearson_p_holm|significant/<parity>/<intervention>/<attribute>`` and
        ``seed_r_mean|seed_r_std|seed_sets_n/...``; an undefined value is left out (its reason is in
        the JSON), never NaN."""
        out: dict[str, float] = {
            "n_configurations_found": self.n_found, "n_configurations": len(self.configurations),
            "n_excluded_chance": self.n_excluded_chance,
            "n_excluded_no_seeds": sum(e["reason"] == "no_seeds" for e in self.excluded),
            "n_excluded_params": sum(e["reason"] == "params" for e in self.excluded),
            "n_seed_runs_at_chance": len(self.seed_runs_at_chance),
            "n_seed_runs_untested": len(self.seed_runs_untested),
            "n_correlations": len(self.correlations),
            "n_correlations_undefined": sum(c.pearson.undefined is not None for c in self.correlations),
            "n_correlations_significant": sum(c.significant for c in self.correlations)}
        for c in self.correlations:
            values = {"pearson_r": c.pearson.r, "pearson_p": c.pearson.p, "pearson_n": c.pearson.n,
                      "pearson_ci95_low": c.pearson.ci95_low, "pearson_ci95_high": c.pearson.ci95_high,
                      "pearson_p_holm": c.p_holm,
                      "significant": None if c.p_holm is None else float(c.significant),
                      "seed_sets_n": c.seed_sets["n"], "seed_r_mean": c.seed_sets["mean"],
                      "seed_r_std": c.seed_sets["std"]}
            out.update({f"{name}/{c.key}": float(v) for name, v in values.items()
                        if v is not None and math.isfinite(v)})
        if self.representation:         # §5.2.2, keyed <metric>/<attribute>/<configuration run id>
            out["n_representation_correlations"] = len(self.representation)
        for c in self.representation:
            values = {"r": c.pearson.r, "p": c.pearson.p, "n": c.pearson.n, "ci95_low": c.pearson.ci95_low,
                      "ci95_high": c.pearson.ci95_high, "p_holm": c.p_holm, "spearman_rho": c.spearman_rho,
                      "significant": None if c.p_holm is None else float(c.significant)}
            out.update({f"train_size_{name}/{c.key}": float(v) for name, v in values.items()
                        if v is not None and math.isfinite(v)})
        for key, spread in across_configurations(self.representation).items():
            out.update({f"train_size_r_{stat}/{key}": float(spread[stat]) for stat in ("mean", "std")
                        if spread[stat] is not None})
        return out

    def to_json(self) -> dict:
        return {
            "method": "speech paper 003 §5.1: Pearson r between each intervention and each parity metric per "
                      "attribute across configurations (seed-mean metric), its 95% Fisher-z interval, and Holm's "
                      f"correction over the analysis's {self.n_holm} defined correlations (significant: p_holm < "
                      f"{SIGNIFICANCE}); per-seed-set r's are descriptive (mean, sample std), no interval",
            "chance_rule": self.chance_rule_text() + "; configurations left without seed runs are excluded",
            "chance_rule_name": self.chance_rule,
            "parity_metrics": {m: PARITY_METRICS.get(m, "") for m in self.parity_metrics},
            "missing_metrics": self.missing_metrics,
            "interventions": {n: {"kind": i.kind, "description": i.description} for n, i in self.interventions.items()},
            "attributes": self.attributes,
            "counts": {k: v for k, v in self.mlflow_metrics().items() if k.startswith("n_")},
            "configurations": self.configurations, "excluded": self.excluded,
            "seed_runs_at_chance": self.seed_runs_at_chance, "seed_runs_untested": self.seed_runs_untested,
            "correlations": [{"parity": c.parity, "intervention": c.intervention, "attribute": c.attribute,
                              "kind": self.interventions[c.intervention].kind, "r": c.pearson.r, "p": c.pearson.p,
                              "n": c.pearson.n, "ci95_low": c.pearson.ci95_low, "ci95_high": c.pearson.ci95_high,
                              "p_holm": c.p_holm, "significant": c.significant, "undefined": c.pearson.undefined,
                              "per_seed_set": c.seed_sets}
                             for c in self.correlations],
            "representation": {
                "method": "speech paper 003 §5.2.2: per configuration and attribute, Pearson r over the groups "
                          "between the training-set size group_train_n and the group's AUC_FPR (seed means), its "
                          "Fisher-z interval, Holm-adjusted with the correlations above; Spearman's rho beside it; "
                          "across configurations the mean ± sample std of r (descriptive)",
                "correlations": [c.to_json() for c in self.representation],
                "across_configurations": across_configurations(self.representation)},
        }


def _seed_chance(seed: SeedInput, rule: str, alpha: float) -> tuple[ChanceTest | None, str | None]:
    """(the chance verdict, None) or (None, why the seed run cannot be tested)."""
    if seed.counts is None:
        return None, seed.counts_missing or "no clean counts"
    try:
        return chance_verdict(seed.counts, rule, alpha), None
    except ValueError as err:
        return None, f"bad clean counts {seed.counts}: {err}"


def _attributes(configurations: Sequence[dict], family: str) -> list[str]:
    prefix = f"{family}/"
    return sorted({k[len(prefix):] for c in configurations for s in c["seed_metrics"].values()
                   for k in s if k.startswith(prefix) and "/" not in k[len(prefix):]})


def _value(metrics: Mapping[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _seed_sets(kept: Sequence[dict], intervention: str, key: str) -> dict:
    """The correlation per seed set (seed s of every configuration that kept it) and the mean
    and sample std of the defined r's: a description of seed sensitivity, no interval (seed
    indices are unrelated across configurations)."""
    seeds = sorted({s for c in kept for s in c["seed_metrics"]})
    rs: dict[int, float | None] = {}
    undefined: dict[int, str] = {}
    for seed in seeds:
        points = [(c["interventions"][intervention], v) for c in kept
                  if seed in c["seed_metrics"] and (v := _value(c["seed_metrics"][seed], key)) is not None]
        result = pearson([x for x, _ in points], [y for _, y in points], x_name="the intervention",
                         y_name="the metric")
        rs[seed] = result.r
        if result.undefined:
            undefined[seed] = result.undefined
    spread = summarize([r for r in rs.values() if r is not None])
    return {"seeds": seeds, "r": rs, "undefined": undefined, "n": spread["n"], "mean": spread["mean"],
            "std": spread["std"]}


def analyze(configurations: Sequence[ConfigurationInput], *, parity_metrics: Sequence[str] | None = None,
            interventions: Mapping[str, Intervention] = INTERVENTIONS, alpha: float = CHANCE_ALPHA,
            chance_rule: str = DEFAULT_CHANCE_RULE) -> Analysis:
    """The §5.1 meta-analysis of ``configurations`` (speech paper 003 §5.1).

    ``parity_metrics``: families of :data:`PARITY_METRICS` to correlate (default: every one
    some analysed configuration recorded). ``chance_rule``: a key of :data:`CHANCE_RULES`
    (``alpha`` is the binomial rule's level). Configurations are excluded, with the reason, when
    their params give no intervention value (``params``), they have no FINISHED seed run
    (``no_seeds``), or every seed run is at chance (``chance``). Holm's correction runs over
    every defined correlation of the result."""
    if chance_rule not in CHANCE_RULES:
        raise ValueError(f"unknown chance rule {chance_rule!r}; known: {', '.join(CHANCE_RULES)}")
    kept: list[dict] = []
    excluded: list[dict] = []
    at_chance: list[dict] = []
    untested: list[dict] = []
    for config in configurations:
        ident = {"run_id": config.run_id, "name": config.name}
        try:
            values = intervention_values(config.params, config.defense, interventions)
        except ValueError as err:
            excluded.append({**ident, "reason": "params", "detail": str(err)})
            continue
        if not config.seeds:
            excluded.append({**ident, "reason": "no_seeds", "detail": "no FINISHED seed run"})
            continue
        seed_metrics: dict[int, Mapping[str, float]] = {}
        for seed in sorted(config.seeds, key=lambda s: s.seed):
            test, why = _seed_chance(seed, chance_rule, alpha)
            where = {**ident, "seed": seed.seed, "seed_run_id": seed.run_id}
            if test is None:
                untested.append({**where, "reason": why})
            elif test.at_chance:
                at_chance.append({**where, "rule": test.rule, "correct": test.correct, "n": test.n, "k": test.k,
                                  "majority": test.majority, "p_value": test.p_value, "describe": test.describe()})
                continue
            seed_metrics[seed.seed] = seed.metrics
        if not seed_metrics:
            why = (f"p >= {alpha}" if chance_rule == "binomial" else "clean accuracy not above the majority class")
            excluded.append({**ident, "reason": "chance",
                             "detail": f"all {len(config.seeds)} seed run(s) at chance ({why})"})
            continue
        kept.append({**ident, "interventions": values, "seeds": sorted(seed_metrics), "seed_metrics": seed_metrics})

    found = [m for m in PARITY_METRICS if _attributes(kept, m)]
    wanted = list(parity_metrics) if parity_metrics is not None else found
    unknown = [m for m in wanted if m not in PARITY_METRICS]
    if unknown:
        raise ValueError(f"unknown parity metric(s) {unknown}; known: {', '.join(PARITY_METRICS)}")
    attributes = {m: _attributes(kept, m) for m in wanted}
    missing = [m for m in wanted if not attributes[m]]
    correlations: list[Correlation] = []
    for family in wanted:
        for attribute in attributes[family]:
            key = f"{family}/{attribute}"
            for config in kept:
                per_seed = [v for s in config["seed_metrics"].values() if (v := _value(s, key)) is not None]
                config.setdefault("means", {})[key] = float(np.mean(per_seed)) if per_seed else None
            for name in interventions:
                points = [(c["interventions"][name], c["means"][key]) for c in kept if c["means"][key] is not None]
                result = pearson([x for x, _ in points], [y for _, y in points],
                                 x_name=f"intervention {name!r}", y_name=f"{key}")
                correlations.append(Correlation(family, name, attribute, result, _seed_sets(kept, name, key)))
    representation = representation_correlations(kept, pearson)
    defined = [c for c in [*correlations, *representation] if c.pearson.p is not None]
    for c, adjusted in zip(defined, holm_adjust([c.pearson.p for c in defined])):
        c.p_holm, c.significant = adjusted, adjusted < SIGNIFICANCE
    analysed = [{k: c.get(k, {}) for k in ("run_id", "name", "interventions", "seeds", "means")} for c in kept]
    return Analysis(parity_metrics=wanted, interventions=dict(interventions), attributes=attributes,
                    configurations=analysed, excluded=excluded, seed_runs_at_chance=at_chance,
                    seed_runs_untested=untested, correlations=correlations, missing_metrics=missing,
                    alpha=alpha, n_found=len(configurations), chance_rule=chance_rule, representation=representation)
