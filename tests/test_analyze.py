"""``distfair analyze``: the speech paper's meta-analysis (speech paper 003 §5.1): Pearson r
between interventions and parity per attribute across configurations, its Fisher-z interval,
Holm's correction over the analysis, the per-seed-set r's, the chance-level exclusion (both
rules; the paper's tables are in tests/test_chance_rule.py), and the command on a real local
MLflow store (no training, no Ray)."""
from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from distfair import cli, tracking
from distfair.report import meta_analysis as analysis
from distfair.report import meta_analysis_output as analysis_output
from distfair.report.chance import CleanCounts
from distfair.report.meta_analysis import ConfigurationInput, SeedInput

K, N = 10, 100          # classes and test-set size of the hand-made seed runs (10 per class)
Z975 = 1.959964         # the standard normal's 97.5% quantile


def _config(name, params, seeds):
    """A configuration with ``seeds`` = {seed: (metrics, correct)} (correct None: no counts)."""
    return ConfigurationInput(run_id=f"id-{name}", name=name, params=params, seeds=[
        SeedInput(seed=s, run_id=f"id-{name}-{s}", metrics=m,
                  counts=None if c is None else CleanCounts.balanced(c, N, K),
                  counts_missing=None if c is not None else "no confusion_matrices.json")
        for s, (m, c) in seeds.items()], defense=_traits(params))


def _traits(params):
    """What the configuration's defense class declares, as the command reads it."""
    from distfair.defenses import DEFENSES

    return analysis.declared_traits(params, DEFENSES)


def _params(defense="waveform_at", eps=0.0, sigma=0.0, model="m5"):
    """Flat params as MLflow holds them: every value a string."""
    return {"defense.name": defense, "attack.eps": str(eps), "defense.sigma": str(sigma), "model.name": model}


# ------------------------------------------------------------------------- interventions
def test_interventions_from_flat_params():
    def value(params):
        return analysis.intervention_values(params, _traits(params))

    assert value(_params(eps=0.0, sigma=0.05)) == {"at": 0.0, "tricks": 0.0, "noise": 1.0, "budget": 0.0,
                                                   "sigma": 0.05}
    assert value(_params(eps=0.01, sigma=0.0, model="m5_tricks")) == {"at": 1.0, "tricks": 1.0, "noise": 0.0,
                                                                      "budget": 0.01, "sigma": 0.0}
    # a defense that does not train on the attack: its attack.eps is no AT budget
    assert value(_params(defense="standard", eps=0.1))["at"] == 0.0
    assert value(_params(defense="standard", eps=0.1))["budget"] == 0.0
    assert value({"defense.name": "noise_aug", "defense.sigma": 0.1, "attack": None}) == {
        "at": 0.0, "tricks": 0.0, "noise": 1.0, "budget": 0.0, "sigma": 0.1}
    # no defense.sigma param (pgd_at has none), and MLflow's "None"
    assert value({"defense.name": "pgd_at", "attack.eps": "0.03", "model.name": "mlp", "defense.sigma": "None"}) == {
        "at": 1.0, "tricks": 0.0, "noise": 0.0, "budget": 0.03, "sigma": 0.0}
    # waveform_at with λ = 0: the adversarial term has no weight, so no adversarial training
    assert value({**_params(eps=0.01), "defense.adv_weight": "0.0"})["at"] == 0.0
    assert value({**_params(eps=0.01), "defense.adv_weight": "0.5"})["at"] == 1.0
    with pytest.raises(ValueError, match="param attack.eps"):
        value(_params(eps="large"))


def test_adversarial_training_defenses_are_those_that_train_on_the_attack():
    from distfair.defenses import DEFENSES

    assert {n for n, c in DEFENSES.items() if c.adversarial_training} == {n for n, c in DEFENSES.items()
                                                                         if c.needs_attack}
    # what a defense declares reaches the analysis as data; an unknown defense declares nothing
    assert analysis.declared_traits({"defense.name": "waveform_at"}, DEFENSES) == analysis.DefenseTraits(
        adversarial_training=True, adversarial_weight_option="adv_weight", noise_sigma_option="sigma")
    assert analysis.declared_traits({"defense.name": "third_party"}, DEFENSES) == analysis.DefenseTraits()


def test_each_intervention_is_described():
    for name, i in analysis.INTERVENTIONS.items():
        assert i.kind in ("binary", "level") and i.description, name


# ----------------------------------------------------------------------------- statistics
HAND = [  # (eps, sigma, model, defense_parity/gender)
    (0.0, 0.0, "m5", 0.10), (0.01, 0.0, "m5", 0.20), (0.0, 0.05, "m5_tricks", 0.12),
    (0.01, 0.05, "m5_tricks", 0.31), (0.005, 0.0, "m5_tricks", 0.25), (0.0, 0.1, "m5", 0.05)]


def test_pearson_matches_scipy_and_the_formula_on_a_hand_table():
    configs = [_config(f"c{i}", _params(eps=e, sigma=s, model=m), {0: ({"defense_parity/gender": y}, 90)})
               for i, (e, s, m, y) in enumerate(HAND)]
    result = analysis.analyze(configs)
    y = [row[3] for row in HAND]
    by = {c.intervention: c for c in result.correlations}
    for name, x in (("at", [float(e > 0) for e, *_ in HAND]), ("budget", [e for e, *_ in HAND]),
                    ("tricks", [float(m == "m5_tricks") for *_, m, _ in HAND]), ("sigma", [s for _, s, *_ in HAND])):
        expected = stats.pearsonr(x, y)
        dx, dy = np.subtract(x, np.mean(x)), np.subtract(y, np.mean(y))
        by_hand = float(dx @ dy / math.sqrt((dx @ dx) * (dy @ dy)))
        assert by[name].pearson.r == pytest.approx(expected.statistic) == pytest.approx(by_hand)
        assert by[name].pearson.p == pytest.approx(expected.pvalue)
        assert by[name].pearson.n == len(HAND)
    assert result.parity_metrics == ["defense_parity"] and result.attributes == {"defense_parity": ["gender"]}


def test_point_estimate_uses_the_seed_mean_and_the_spread_is_per_seed_set():
    """3 seeds per configuration (configuration 3 lacks seed 2): r over configurations of the
    seed means, with its Fisher-z interval over the 5 configurations; per seed set s the r over
    the configurations that have seed s, then the mean and sample std of those three r's, and
    no t-interval over them (seed indices are unrelated across configurations)."""
    x = [0.0, 1.0, 0.0, 1.0, 1.0]                     # at
    y = {0: [0.10, 0.30, 0.12, 0.25, 0.40],           # seed -> metric per configuration
         1: [0.14, 0.22, 0.10, 0.35, 0.30],
         2: [0.08, 0.26, 0.15, None, 0.28]}
    configs = [_config(f"c{i}", _params(eps=0.01 * x[i]),
                       {s: ({"defense_parity/age": y[s][i]}, 95) for s in y if y[s][i] is not None})
               for i in range(5)]
    result = analysis.analyze(configs, parity_metrics=["defense_parity"])
    at = next(c for c in result.correlations if c.intervention == "at")
    means = [float(np.mean([y[s][i] for s in y if y[s][i] is not None])) for i in range(5)]
    assert at.pearson.r == pytest.approx(np.corrcoef(x, means)[0, 1])
    per_seed = {s: float(np.corrcoef([x[i] for i in range(5) if y[s][i] is not None],
                                     [v for v in y[s] if v is not None])[0, 1]) for s in y}
    assert at.seed_sets["r"] == pytest.approx(per_seed)
    mean, sd = statistics.mean(per_seed.values()), statistics.stdev(per_seed.values())
    assert (at.seed_sets["n"], at.seed_sets["mean"], at.seed_sets["std"]) == (3, pytest.approx(mean), pytest.approx(sd))
    assert "ci95_low" not in at.seed_sets and "ci95_high" not in at.seed_sets
    r, half = at.pearson.r, Z975 / math.sqrt(5 - 3)
    assert (at.pearson.ci95_low, at.pearson.ci95_high) == (pytest.approx(math.tanh(math.atanh(r) - half)),
                                                          pytest.approx(math.tanh(math.atanh(r) + half)))
    assert "per seed set" in analysis_output.format_table(result)
    assert not any(k.startswith("seed_r_ci95") for k in result.mlflow_metrics())


def test_constant_intervention_or_metric_is_undefined_never_nan():
    configs = [_config(f"c{i}", _params(eps=e, model="m5"), {0: ({"defense_parity/gender": y,
                                                                 "clean_group_gap/gender": 0.2}, 90)})
               for i, (e, y) in enumerate([(0.0, 0.1), (0.01, 0.3), (0.005, 0.2), (0.0, 0.15)])]
    result = analysis.analyze(configs)
    by = {(c.parity, c.intervention): c for c in result.correlations}
    noise = by[("defense_parity", "noise")]                    # nobody has noise augmentation
    assert noise.pearson.r is None and noise.pearson.p is None and noise.pearson.n == 4
    assert "intervention 'noise' is constant (0) over all 4 points" in noise.pearson.undefined
    assert noise.seed_sets["n"] == 0 and noise.seed_sets["mean"] is None
    flat = by[("clean_group_gap", "at")]                       # the metric is the same everywhere
    assert flat.pearson.r is None and "clean_group_gap/gender is constant" in flat.pearson.undefined
    assert by[("defense_parity", "at")].pearson.r is not None
    metrics = result.mlflow_metrics()
    assert all(math.isfinite(v) for v in metrics.values())
    assert "pearson_r/defense_parity/noise/gender" not in metrics
    assert metrics["pearson_n/defense_parity/noise/gender"] == 4
    assert "pearson_r/defense_parity/at/gender" in metrics
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    row = next(c for c in doc["correlations"] if (c["parity"], c["intervention"]) == ("defense_parity", "noise"))
    assert row["r"] is None and "constant" in row["undefined"]
    assert "undefined" in analysis_output.format_table(result)
    assert metrics["n_correlations_undefined"] == sum(c.pearson.undefined is not None for c in result.correlations)


def test_fewer_than_three_points_give_no_correlation():
    assert analysis.pearson([0, 1], [0.1, 0.2]).undefined.startswith("only 2 point(s)")


def test_fisher_interval_by_hand():
    """r = 0.5, n = 12: atanh(0.5) = 0.549306, half-width 1.959964 / 3 = 0.653321, so
    tanh(-0.104015) = -0.103641 and tanh(1.202627) = 0.834454."""
    low, high = analysis.fisher_interval(0.5, 12)
    assert (low, high) == (pytest.approx(-0.103641, abs=1e-6), pytest.approx(0.834454, abs=1e-6))
    assert (low, high) == (pytest.approx(math.tanh(math.atanh(0.5) - Z975 / 3), abs=1e-6),
                           pytest.approx(math.tanh(math.atanh(0.5) + Z975 / 3), abs=1e-6))
    # negative r, n = 28: symmetric in z around atanh(-0.3), half-width 1.959964 / 5
    low, high = analysis.fisher_interval(-0.3, 28)
    assert (low, high) == (pytest.approx(math.tanh(math.atanh(-0.3) - 0.3919928)),
                           pytest.approx(math.tanh(math.atanh(-0.3) + 0.3919928)))
    assert analysis.fisher_interval(0.9, 3) is None                      # n - 3 = 0: no interval
    assert analysis.fisher_interval(1.0, 10) == (1.0, 1.0) and analysis.fisher_interval(-1.0, 10) == (-1.0, -1.0)
    # the interval pearson() reports is scipy's Fisher interval of the same points
    x, y = [0, 0, 1, 1, 1, 0, 1], [0.1, 0.2, 0.25, 0.4, 0.3, 0.15, 0.2]
    result, expected = analysis.pearson(x, y), stats.pearsonr(x, y).confidence_interval(0.95)
    assert (result.ci95_low, result.ci95_high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert analysis.pearson([0, 1, 1], [0.1, 0.3, 0.2]).ci95_low is None      # n = 3: r, no interval


def test_holm_by_hand():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 -> max(0.06, 0.04) = 0.06 (step-down keeps the order); back in place:
    (0.03, 0.06, 0.06, 0.02). At 0.05: the first and last survive."""
    assert analysis.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert analysis.holm_adjust([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert analysis.holm_adjust([0.5, 0.7, 0.9]) == pytest.approx([1.0, 1.0, 1.0])     # capped at 1
    assert analysis.holm_adjust([]) == []


def test_holm_runs_over_every_defined_correlation_of_the_analysis():
    """Two parity metrics x one attribute x five interventions, noise and σ constant (undefined):
    Holm over the 6 defined p's, whatever their metric; undefined ones have no p_holm."""
    configs = [_config(f"c{i}", _params(eps=e, sigma=0.0, model=m),
                       {0: ({"defense_parity/gender": y, "clean_group_gap/gender": g}, 90)})
               for i, (e, m, y, g) in enumerate([(0.0, "m5", 0.10, 0.05), (0.01, "m5", 0.30, 0.02),
                                                 (0.005, "m5_tricks", 0.22, 0.08), (0.0, "m5_tricks", 0.12, 0.01),
                                                 (0.01, "m5_tricks", 0.35, 0.06), (0.001, "m5", 0.11, 0.04)])]
    result = analysis.analyze(configs)
    defined = [c for c in result.correlations if c.pearson.p is not None]
    assert len(result.correlations) == 10 and len(defined) == 6 == result.n_holm
    ps = [c.pearson.p for c in defined]
    order = sorted(range(6), key=lambda i: ps[i])
    by_hand, running = [0.0] * 6, 0.0
    for rank, i in enumerate(order):                                 # Holm's step-down, written out
        running = max(running, min(1.0, (6 - rank) * ps[i]))
        by_hand[i] = running
    assert [c.p_holm for c in defined] == pytest.approx(by_hand)
    assert [c.significant for c in defined] == [p < 0.05 for p in by_hand]
    assert any(c.significant for c in defined) and not all(c.significant for c in defined)
    assert all(c.p_holm is None and not c.significant for c in result.correlations if c.pearson.p is None)
    metrics = result.mlflow_metrics()
    key = defined[0].key
    assert metrics[f"pearson_p_holm/{key}"] == pytest.approx(by_hand[0])
    assert metrics["n_correlations_significant"] == sum(c.significant for c in defined)
    assert "pearson_p_holm/defense_parity/noise/gender" not in metrics
    table = analysis_output.format_table(result)
    assert "Holm's correction over the 6 defined correlation(s)" in table


# ---------------------------------------------------------------------------- chance level
def test_chance_test_boundary_by_hand():
    """n = 100, K = 10: P(X >= c) under Binomial(100, 0.1), summed by hand: 15 correct give
    p = 0.0726 (at chance: not rejected at 0.05), 16 give p = 0.0399 (above chance)."""
    def upper_tail(c):
        return sum(math.comb(N, i) * 0.1 ** i * 0.9 ** (N - i) for i in range(c, N + 1))

    at, above = analysis.chance_test(15, N, K), analysis.chance_test(16, N, K)
    assert at.p_value == pytest.approx(upper_tail(15)) == pytest.approx(0.072573, abs=1e-6)
    assert above.p_value == pytest.approx(upper_tail(16)) == pytest.approx(0.039891, abs=1e-6)
    assert at.at_chance and not above.at_chance
    assert analysis.chance_test(10, N, K).at_chance and not analysis.chance_test(90, N, K).at_chance
    assert analysis.chance_test(16, N, K, alpha=0.01).at_chance          # p = 0.0399 >= 0.01
    for bad in ((101, 100, 10), (5, 0, 10), (5, 100, 1), (5.0, 100, 10)):
        with pytest.raises(ValueError):
            analysis.chance_test(*bad)


def test_clean_counts_from_the_confusion_document():
    doc = {"class_names": ["a", "b", "c"], "matrices": {"clean": [[5, 1, 0], [2, 3, 0], [0, 0, 4]], "pgd": [[0]]},
           "abstained": {"clean": [1, 0, 2]}}
    counts = analysis.clean_counts(doc)      # abstentions count in their true class's support, never as correct
    assert counts == CleanCounts(12, (7, 5, 6), predicted_classes=3)
    assert (counts.correct, counts.n, counts.k, counts.majority) == (12, 18, 3, 7)
    with pytest.raises(ValueError, match="no clean matrix"):
        analysis.clean_counts({"matrices": {}})


def test_chance_exclusion_of_seed_runs_and_configurations_binomial_rule():
    """The former rule (``chance_rule="binomial"``): 15/100 correct is at chance (p = 0.073)."""
    m = lambda y: {"defense_parity/gender": y}                   # noqa: E731
    configs = [
        _config("good", _params(eps=0.0), {0: (m(0.1), 90), 1: (m(0.2), 88)}),
        _config("half", _params(eps=0.01), {0: (m(0.3), 16), 1: (m(0.9), 15)}),   # seed 1 at chance
        _config("dead", _params(eps=0.1), {0: (m(0.0), 10), 1: (m(0.0), 15)}),    # every seed at chance
        _config("untested", _params(eps=0.005), {0: (m(0.25), None)}),           # no counts: kept
        _config("empty", _params(eps=0.0), {}),
        _config("also", _params(eps=0.001), {0: (m(0.05), 70)}),
    ]
    result = analysis.analyze(configs, chance_rule="binomial")
    assert [c["name"] for c in result.configurations] == ["good", "half", "untested", "also"]
    assert {(e["name"], e["reason"]) for e in result.excluded} == {("dead", "chance"), ("empty", "no_seeds")}
    assert [(s["name"], s["seed"]) for s in result.seed_runs_at_chance] == [("half", 1), ("dead", 0), ("dead", 1)]
    assert [(s["name"], s["seed"]) for s in result.seed_runs_untested] == [("untested", 0)]
    half = next(c for c in result.configurations if c["name"] == "half")
    assert half["seeds"] == [0] and half["means"]["defense_parity/gender"] == 0.3   # the chance seed is left out
    metrics = result.mlflow_metrics()
    assert (metrics["n_configurations_found"], metrics["n_configurations"], metrics["n_excluded_chance"],
            metrics["n_seed_runs_at_chance"], metrics["n_seed_runs_untested"]) == (6, 4, 1, 3, 1)
    text = analysis_output.format_exclusions(result)
    assert "6 configuration(s) found, 4 analysed; 1 excluded at chance" in text and "--chance-rule binomial" in text
    assert "excluded (chance): dead (id-dead)" in text and "10/100 correct (0.1), K=10" in text
    assert "seed run(s) at chance left out of half" in text and "15/100 correct" in text
    assert "KEPT" in text and "untested seed 0" in text
    doc = result.to_json()
    assert doc["counts"]["n_excluded_chance"] == 1 and doc["excluded"][0]["name"] == "dead"
    assert doc["chance_rule_name"] == "binomial" and "binomtest" in doc["chance_rule"]


def test_chance_exclusion_of_seed_runs_and_configurations_majority_rule():
    """The default rule: at chance when correct <= the majority-class support (10 of 100 with 10
    balanced classes): 15/100 is above it and kept, 10/100 and below is left out."""
    m = lambda y: {"defense_parity/gender": y}                   # noqa: E731
    configs = [
        _config("good", _params(eps=0.0), {0: (m(0.1), 90), 1: (m(0.2), 88)}),
        _config("half", _params(eps=0.01), {0: (m(0.3), 15), 1: (m(0.9), 10)}),   # seed 1 at chance
        _config("dead", _params(eps=0.1), {0: (m(0.0), 10), 1: (m(0.0), 3)}),     # every seed at chance
        _config("untested", _params(eps=0.005), {0: (m(0.25), None)}),           # no counts: kept
        _config("also", _params(eps=0.001), {0: (m(0.05), 11)}),                 # 11 > 10: kept
    ]
    result = analysis.analyze(configs)
    assert result.chance_rule == "majority"
    assert [c["name"] for c in result.configurations] == ["good", "half", "untested", "also"]
    assert [(e["name"], e["reason"]) for e in result.excluded] == [("dead", "chance")]
    assert [(s["name"], s["seed"]) for s in result.seed_runs_at_chance] == [("half", 1), ("dead", 0), ("dead", 1)]
    assert result.seed_runs_at_chance[0]["majority"] == 10 and result.seed_runs_at_chance[0]["p_value"] is None
    half = next(c for c in result.configurations if c["name"] == "half")
    assert half["seeds"] == [0] and half["means"]["defense_parity/gender"] == 0.3
    text = analysis_output.format_exclusions(result)
    assert "5 configuration(s) found, 4 analysed; 1 excluded at chance (every seed run's clean accuracy not above " \
           "the test set's majority-class rate; --chance-rule majority)" in text
    assert "10/100 correct (0.1), K=10, predicts" not in text          # balanced() gives no predicted columns
    assert "majority class 10/100 (0.1): not above it" in text and "3/100 correct (0.03)" in text
    doc = result.to_json()
    assert doc["chance_rule_name"] == "majority" and "majority-class" in doc["chance_rule"]
    assert "clean accuracy not above the majority class" in doc["excluded"][0]["detail"]


def test_nothing_left_to_correlate_is_said():
    result = analysis.analyze([_config("dead", _params(), {0: ({"defense_parity/gender": 0.0}, 10)})])
    assert result.correlations == [] and result.n_excluded_chance == 1
    assert analysis_output.format_table(result).startswith("nothing to correlate")


def test_unknown_parity_metric_is_refused():
    with pytest.raises(ValueError, match="unknown parity metric"):
        analysis.analyze([], parity_metrics=["accuracy"])


def test_heatmap_draws_undefined_cells(tmp_path):
    from distfair.plotting import heatmap

    path = heatmap(np.array([[0.5, np.nan], [-0.2, 1.0]]), ["gender", "age"], ["at", "noise"], "t",
                   tmp_path / "h.png", vmin=-1, vmax=1, column_split=1)
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="need shape"):
        heatmap(np.zeros((2, 2)), ["a"], ["b", "c"], "t", tmp_path / "x.png", vmin=-1, vmax=1)


# ------------------------------------------------------------ the command on a real MLflow store
ATTRS = ("gender", "accent")
#: (name, eps, sigma, model, {seed: (correct of 100, defense_parity/gender, clean_group_gap/gender)})
GRID = [
    ("c1", 0.0, 0.0, "m5", {0: (92, 0.10, 0.05), 1: (90, 0.12, 0.07)}),
    ("c2", 0.01, 0.0, "m5", {0: (80, 0.30, 0.10), 1: (15, 0.90, 0.50)}),       # seed 1 at chance (binomial only)
    ("c3", 0.0, 0.05, "m5_tricks", {0: (91, 0.14, 0.04), 1: (93, 0.16, 0.06)}),
    ("c4", 0.01, 0.05, "m5_tricks", {0: (75, 0.35, 0.12), 1: (77, 0.31, 0.10)}),
    ("c5", 0.005, 0.0, "m5_tricks", {0: (85, 0.22, 0.08), 1: (86, 0.20, 0.09)}),
    ("c6", 0.1, 0.05, "m5", {0: (10, 0.00, 0.00), 1: (9, 0.01, 0.00)}),         # every seed at chance (both rules)
]


def _seed_result(seed: int, correct: int, parity: float, gap: float) -> dict:
    """A seed result shaped as the engine's ``SeedResult.to_dict()``, its metric names made by
    the engine's own ``metric_record`` plus the auc_acc summary's metrics."""
    from distfair.engine.train import metric_record

    matrix = np.zeros((K, K), dtype=int)
    for i in range(N):                                   # 10 samples per class, ``correct`` on the diagonal
        true = i % K
        matrix[true, true if i < correct else (true + 1) % K] += 1
    clean = {"acc": correct / N, **{f"group_gap/{a}": gap * (1 + j) for j, a in enumerate(ATTRS)}}
    attacked = {"acc": correct / N / 2}
    summary = {"auc_acc": 0.01, **{f"defense_parity/{a}": parity * (1 + j) for j, a in enumerate(ATTRS)}}
    names = [str(k) for k in range(K)]
    return {"seed": seed, "metrics": {**metric_record(clean, [("pgd_1e-4", attacked)]), **summary},
            "confusion": {"clean": matrix.tolist()}, "per_class_acc": {"clean": [0.5] * K}, "history": [],
            "class_names": names, "final_model_path": None, "summaries": {}, "checks": [], "flags_path": None,
            "evaluations": [{"name": "pgd_1e-4", "attack": "pgd"}], "eval_errors": {}, "tags": {}, "abstentions": {},
            "config": {}, "per_eval": {"clean": clean, "pgd_1e-4": attacked}, "val_per_eval": {},
            "summary_metrics": {"test": summary}, "timings": {}}


def _expected(metric: str, intervention: str, attribute: str, rule: str = "majority") -> float:
    """r over c1-c5 of the seed-mean metric; under the binomial rule c2 on seed 0 only (its seed
    1, 15/100 correct, is at chance there, not under the majority rule: 15 > 10)."""
    factor = 1 + ATTRS.index(attribute)
    xs, ys = [], []
    for name, eps, sigma, model, seeds in GRID[:5]:
        kept = [v for s, v in seeds.items() if not (rule == "binomial" and name == "c2" and s == 1)]
        column = 1 if metric == "defense_parity" else 2
        ys.append(np.mean([v[column] * factor for v in kept]))
        xs.append({"at": float(eps > 0), "budget": eps, "tricks": float(model == "m5_tricks"),
                   "noise": float(sigma > 0), "sigma": sigma}[intervention])
    return float(stats.pearsonr(xs, ys).statistic)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store written with distfair's own tracking functions: a sweep run with
    configuration runs c1-c6 (speech_interventions-shaped flat params) and their seed runs
    (``SeedRunLogger.log_result``), a FAILED and a retired seed run, and one `distfair run`
    configuration outside the sweep. MLflow >= 3.17 refuses the plain file store unless
    MLFLOW_ALLOW_FILE_STORE is set, so SQLite (distfair's default) stands in for it."""
    import distfair.evaluation.seed_figures as figures
    from distfair.config import flatten

    root = tmp_path_factory.mktemp("analyze")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved, figures.seed_figures = figures.seed_figures, lambda *a, **k: []    # the figures are not analysed
    try:
        exp = tracking.prepare_experiment(uri, "speech_interventions")
        sweep = tracking.start_sweep_run(uri, exp, name="speech_interventions-1", params={"num_seeds": 2},
                                         lookup={"distfair.sweep_name": "speech_interventions-1"})
        ids = {}
        for name, eps, sigma, model, seeds in GRID:
            cfg = {"defense": {"name": "waveform_at", "adv_weight": 0.5, "sigma": sigma},
                   "dataset": {"name": "spoken_words", "split_seed": 0}, "model": {"name": model},
                   "attack": {"name": "pgd", "eps": eps, "steps": 5, "alpha": None}, "seeds": sorted(seeds)}
            ids[name] = parent = tracking.start_parent_run(
                uri, exp, flatten(cfg), run_name=name,
                tags={tracking.TAG_PARENT: sweep, "distfair.trial_id": name}, lookup={"distfair.sweep_run": sweep,
                                                                                      "distfair.trial_id": name})
            for seed, (correct, parity, gap) in seeds.items():
                run_id = tracking.get_or_create_seed_run(uri, exp, parent, seed)
                tracking.SeedRunLogger(uri, run_id).log_result(_seed_result(seed, correct, parity, gap),
                                                               title=f"{name}, seed {seed}")
        # a failed seed and a retired (deleted) one: never counted
        failed = tracking.get_or_create_seed_run(uri, exp, ids["c1"], 2)
        tracking.mark_runs(uri, [failed], "FAILED")
        retired = tracking.get_or_create_seed_run(uri, exp, ids["c3"], 3)
        tracking.retire_run(uri, retired)
        tracking.log_sweep_outcome(uri, sweep, best=None, metrics={}, artifacts=[], status="FINISHED")
        # one `distfair run` configuration outside the sweep
        outside = tracking.start_parent_run(uri, exp, flatten({"defense": {"name": "waveform_at", "sigma": 0.1},
                                                               "model": {"name": "m5"}, "attack": {"eps": 0.0}}),
                                            run_name="single")
        run_id = tracking.get_or_create_seed_run(uri, exp, outside, 0)
        tracking.SeedRunLogger(uri, run_id).log_result(_seed_result(0, 88, 0.5, 0.3), title="single, seed 0")
        tracking.prepare_experiment(uri, "empty")
    finally:
        figures.seed_figures = saved
    return {"uri": uri, "root": root, "sweep": sweep, "ids": ids, "outside": outside}


def test_analyze_command_end_to_end(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out_dir = tmp_path / "out"
    code = cli.main(["analyze", "--experiment", "speech_interventions", "--sweep", store["sweep"],
                     "--tracking-uri", store["uri"], "--output-dir", str(out_dir)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    # the exclusion, named (the default rule: not above the majority class, 10 of 100)
    assert "6 configuration(s) found, 5 analysed; 1 excluded at chance" in printed
    assert "--chance-rule majority" in printed
    assert f"excluded (chance): c6 ({store['ids']['c6']})" in printed and "10/100 correct (0.1), K=10" in printed
    assert "majority class 10/100 (0.1): not above it" in printed
    assert "left out of c2" not in printed and "15/100 correct" not in printed
    # the table: r per (metric, attribute, intervention), its Fisher-z interval and Holm's p, the seed spread
    r = _expected("defense_parity", "at", "gender")
    assert f"gender       at           {r:>7.3f}" in printed
    assert "per seed set" in printed and "clean_group_gap" in printed and "p (Holm)" in printed
    assert "NOTE: spoken_words subgroups (gender, accent, age) are synthetic eSpeak NG voices, not people" in printed
    # where to look
    run_id = printed.split("analysis run ")[1].split()[0]
    assert str(out_dir) in printed and "Look at it: mlflow ui --backend-store-uri" in printed
    files = {p.name for p in out_dir.iterdir()}
    assert files == {"correlations.csv", "analysis.json", "pearson_defense_parity.png", "pearson_clean_group_gap.png"}
    doc = json.loads((out_dir / "analysis.json").read_text())
    assert doc["counts"]["n_configurations"] == 5 and doc["counts"]["n_excluded_chance"] == 1
    assert [e["name"] for e in doc["excluded"]] == ["c6"]
    assert doc["attributes"] == {"defense_parity": ["accent", "gender"], "clean_group_gap": ["accent", "gender"]}
    with (out_dir / "correlations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 5
    row = next(r for r in rows if (r["parity"], r["intervention"], r["attribute"]) == ("clean_group_gap", "tricks",
                                                                                       "accent"))
    assert float(row["r"]) == pytest.approx(_expected("clean_group_gap", "tricks", "accent"))
    assert float(row["ci95_low"]) < float(row["r"]) < float(row["ci95_high"])
    assert float(row["p_holm"]) >= float(row["p"])
    assert row["significant"] in ("True", "False")
    assert doc["chance_rule_name"] == "majority"
    assert {"ci95_low", "ci95_high", "p_holm", "significant"} <= set(doc["correlations"][0])
    # the analysis run in MLflow
    run = MlflowClient(store["uri"]).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == tracking.find_experiment(
        store["uri"], "speech_interventions")
    assert run.data.tags["distfair.kind"] == "analysis" and run.data.params["sweep_run_id"] == store["sweep"]
    assert "not people" in run.data.tags["mlflow.note.content"]          # the run's MLflow description
    m = run.data.metrics
    assert m["n_configurations"] == 5 and m["n_excluded_chance"] == 1 and m["n_seed_runs_at_chance"] == 2
    assert run.data.params["chance_rule"] == "majority"
    for metric, intervention, attribute in (("defense_parity", "at", "gender"), ("defense_parity", "budget", "accent"),
                                            ("clean_group_gap", "noise", "gender")):
        key = f"{metric}/{intervention}/{attribute}"
        r = _expected(metric, intervention, attribute)
        assert m[f"pearson_r/{key}"] == pytest.approx(r)
        assert m[f"pearson_n/{key}"] == 5
        assert (m[f"pearson_ci95_low/{key}"], m[f"pearson_ci95_high/{key}"]) == (
            pytest.approx(math.tanh(math.atanh(r) - Z975 / math.sqrt(2)), abs=1e-6),
            pytest.approx(math.tanh(math.atanh(r) + Z975 / math.sqrt(2)), abs=1e-6))
        assert 0 < m[f"pearson_p_holm/{key}"] <= 1 and m[f"pearson_p_holm/{key}"] >= m[f"pearson_p/{key}"]
    assert m["seed_sets_n/defense_parity/at/gender"] == 2
    assert all(math.isfinite(v) for v in m.values())
    logged = {a.path for a in MlflowClient(store["uri"]).list_artifacts(run_id)}
    assert logged == files


def test_analyze_with_the_binomial_chance_rule(store, tmp_path, capsys):
    """``--chance-rule binomial``: the former rule leaves c2's seed 1 (15/100, p = 0.073) out too."""
    from mlflow.tracking import MlflowClient

    code = cli.main(["analyze", "--experiment", "speech_interventions", "--sweep", store["sweep"],
                     "--tracking-uri", store["uri"], "--output-dir", str(tmp_path), "--chance-rule", "binomial"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "6 configuration(s) found, 5 analysed; 1 excluded at chance" in printed
    assert "--chance-rule binomial" in printed
    assert "seed run(s) at chance left out of c2" in printed and "15/100 correct" in printed
    assert "one-sided binomial p=0.0726" in printed
    run = MlflowClient(store["uri"]).get_run(printed.split("analysis run ")[1].split()[0])
    assert run.data.params["chance_rule"] == "binomial" and run.data.metrics["n_seed_runs_at_chance"] == 3
    for metric, intervention, attribute in (("defense_parity", "at", "gender"),
                                            ("clean_group_gap", "budget", "accent")):
        assert run.data.metrics[f"pearson_r/{metric}/{intervention}/{attribute}"] == pytest.approx(
            _expected(metric, intervention, attribute, rule="binomial"))
    assert _expected("defense_parity", "at", "gender", "binomial") != pytest.approx(_expected("defense_parity", "at",
                                                                                              "gender"))


def test_analyze_without_sweep_takes_every_configuration_and_prints_json(store, tmp_path, capfd):
    code = cli.main(["analyze", "--experiment", "speech_interventions", "--tracking-uri", store["uri"],
                     "--output-dir", str(tmp_path), "--metric", "defense_parity", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["counts"]["n_configurations_found"] == 7 and doc["counts"]["n_configurations"] == 6
    assert "single" in {c["name"] for c in doc["configurations"]}
    assert list(doc["parity_metrics"]) == ["defense_parity"] and doc["analysis_run_id"] in err
    assert len(doc["notices"]) == 1 and "not people" in doc["notices"][0]
    assert "Pearson correlation" in err


@pytest.mark.parametrize("argv, expected", [
    (["--experiment", "nope"], "MLflow experiment 'nope' does not exist"),
    (["--experiment", "empty"], "experiment 'empty' has no configuration runs"),
    (["--experiment", "speech_interventions", "--sweep", "0" * 32], "no MLflow run"),
    (["--experiment", "speech_interventions", "--metric", "accuracy"], "--metric: unknown parity metric(s) accuracy"),
    (["--experiment", "speech_interventions", "--chance-rule", "margin"],
     "--chance-rule: unknown rule 'margin'; known: majority, binomial"),
])
def test_usage_errors_exit_2_with_one_line(store, capsys, argv, expected):
    assert cli.main(["analyze", "--tracking-uri", store["uri"], *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_configuration_run_is_no_sweep(store, capsys):
    argv = ["analyze", "--tracking-uri", store["uri"], "--experiment", "speech_interventions",
            "--sweep", store["ids"]["c1"]]
    assert cli.main(argv) == 2
    assert "is a configuration run, not a sweep run" in capsys.readouterr().err


def test_a_missing_store_is_reported_not_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["analyze", "--experiment", "speech_interventions"]) == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
