"""``distfair report``: the seed statistics against SciPy/statsmodels on fixed numbers, table
labels, columns and the best-cell rule on hand-made inputs, the command on a hand-written
MLflow store with a multi-objective sweep (no Ray), the command on a real experiment from
``distfair run`` (Ray), and the HTML in a real headless browser."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from conftest import TINY, call_cli
from distfair import cli, tracking
from distfair.report import (ConfigurationInput, Report, SeedInput, SweepInput, build_tables, compare, draw_figures,
                             find_baseline, holm, labels, resolve_columns, seeds_needed, write_report)
from distfair.report import stats as rstats

A = [0.61, 0.64, 0.58, 0.66, 0.63]            # fixed seed values, seeds 0-4
B = [0.55, 0.60, 0.52, 0.57, 0.58]


# ------------------------------------------------------------------------------ statistics
def test_welch_matches_scipy_with_its_interval():
    c = compare(dict(enumerate(A)), dict(enumerate(B[:4])))            # unpaired: seeds differ
    expected = stats.ttest_ind(A, B[:4], equal_var=False)
    ci = expected.confidence_interval(0.95)
    assert c.welch_p == pytest.approx(expected.pvalue) and c.welch_t == pytest.approx(expected.statistic)
    assert c.welch_df == pytest.approx(expected.df)
    # Welch-Satterthwaite df and the interval by hand
    va, vb = np.var(A, ddof=1) / 5, np.var(B[:4], ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = np.mean(A) - np.mean(B[:4])
    assert c.welch_df == pytest.approx(df) and c.diff == pytest.approx(diff)
    assert (c.diff_ci95_low, c.diff_ci95_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c.diff_ci95_low == pytest.approx(diff - half) and c.diff_ci95_high == pytest.approx(diff + half)
    assert not c.paired and c.paired_p is None and c.wilcoxon_p is None
    assert c.test == "welch" and c.p == c.welch_p


def test_paired_t_and_wilcoxon_when_the_seeds_match():
    c = compare(dict(enumerate(A)), dict(enumerate(B)), test="paired")
    assert c.paired and c.paired_n == 5
    assert c.paired_p == pytest.approx(stats.ttest_rel(A, B).pvalue)
    assert c.wilcoxon_p == pytest.approx(stats.wilcoxon(A, B).pvalue) == pytest.approx(0.0625)   # 2/2^5: its floor
    assert c.test == "paired" and c.p == c.paired_p
    # the pairing is by seed, not by position
    shuffled = {4: B[4], 0: B[0], 3: B[3], 1: B[1], 2: B[2]}
    assert compare(dict(enumerate(A)), shuffled).paired_p == pytest.approx(c.paired_p)
    # with --test welch the family still uses Welch, the paired tests are reported beside it
    w = compare(dict(enumerate(A)), dict(enumerate(B)))
    assert w.test == "welch" and w.p == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue)
    assert w.paired_p == pytest.approx(c.paired_p)


def test_effect_sizes_by_hand():
    n1, n2 = len(A), len(B)
    pooled = math.sqrt(((n1 - 1) * np.var(A, ddof=1) + (n2 - 1) * np.var(B, ddof=1)) / (n1 + n2 - 2))
    d = (np.mean(A) - np.mean(B)) / pooled
    m = n1 + n2 - 2
    j = math.gamma(m / 2) / (math.sqrt(m / 2) * math.gamma((m - 1) / 2))       # Hedges 1981, Eq. 6e
    c = compare(dict(enumerate(A)), dict(enumerate(B)))
    assert c.cohens_d == pytest.approx(d) and c.hedges_g == pytest.approx(j * d)
    assert rstats.hedges_correction(m) == pytest.approx(1 - 3 / (4 * m - 1), abs=2e-3)   # the usual approximation
    assert compare(dict(enumerate(B)), dict(enumerate(A))).cohens_d == pytest.approx(-d)


def test_holm_against_statsmodels_and_by_hand():
    ps = [0.01, 0.04, 0.03, 0.005, 0.2]
    comparisons = [rstats.Comparison(n=6, n_reference=6, mean=0, mean_reference=0, diff=0, p=p) for p in ps]
    comparisons.append(rstats.Comparison(n=1, n_reference=6, mean=0, mean_reference=0, diff=0,
                                         undefined="needs at least 2 seeds"))   # not in the family
    holm(comparisons, 0.05)
    reject, adjusted, _, _ = multipletests(ps, alpha=0.05, method="holm")
    assert [c.p_holm for c in comparisons[:5]] == pytest.approx(list(adjusted))
    assert [c.significant for c in comparisons[:5]] == list(reject)
    # step-down by hand: sorted p times (m - rank), running maximum, capped at 1
    order = np.argsort(ps)
    by_hand, running = [0.0] * 5, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (5 - rank) * ps[i]))
        by_hand[i] = running
    assert [c.p_holm for c in comparisons[:5]] == pytest.approx(by_hand)
    assert [c.significant for c in comparisons[:5]] == [True, False, False, True, False]
    assert comparisons[5].p_holm is None and not comparisons[5].significant


def _power_by_hand(d: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided two-sample t-test power with n per group from SciPy's noncentral t."""
    df, nc = 2 * n - 2, d * math.sqrt(n / 2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


@pytest.mark.parametrize("d", [2.0, 1.0, 0.5, -0.8])
def test_seeds_needed_is_the_smallest_n_with_80_percent_power(d):
    n = seeds_needed(d)
    solved = TTestIndPower().solve_power(effect_size=abs(d), alpha=0.05, power=0.8, ratio=1.0)
    assert n == math.ceil(solved)
    assert _power_by_hand(abs(d), n) >= 0.8 > _power_by_hand(abs(d), n - 1)
    assert seeds_needed(None) is None and seeds_needed(0.0) is None
    assert seeds_needed(0.001) == rstats.MAX_SEEDS + 1


def test_comparison_reports_seeds_needed_and_power_from_the_observed_effect():
    c = compare(dict(enumerate(A)), dict(enumerate(B)))
    assert c.seeds_needed == seeds_needed(c.cohens_d)
    assert c.power == pytest.approx(_power_by_hand(abs(c.cohens_d), 5), abs=1e-6)


def test_low_evidence_and_undefined_comparisons():
    five, six = {s: 0.5 + 0.01 * s for s in range(5)}, {s: 0.6 + 0.01 * s for s in range(6)}
    assert compare(five, six).low_evidence and compare(six, five).low_evidence
    assert not compare(six, {s: v + 0.02 for s, v in six.items()}).low_evidence
    one = compare({0: 0.5}, six)
    assert one.p is None and "at least 2 seeds" in one.undefined and one.diff == pytest.approx(0.5 - np.mean(
        list(six.values())))
    flat = compare({0: 0.5, 1: 0.5}, {0: 0.7, 1: 0.7})
    assert flat.p is None and "no spread" in flat.undefined
    # missing values (None, NaN) are left out before anything else
    holes = compare({0: 0.5, 1: None, 2: 0.6, 3: float("nan"), 4: 0.55}, six)
    assert holes.n == 3 and holes.welch_p == pytest.approx(stats.ttest_ind([0.5, 0.6, 0.55], list(six.values()),
                                                                           equal_var=False).pvalue)
    # same seeds, every pair equal: no paired test, Wilcoxon undefined
    same = compare({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same.paired and same.paired_p is None and same.wilcoxon_p is None
    with pytest.raises(ValueError, match="test"):
        compare(five, six, test="mann-whitney")


def test_std_interval_is_the_chi_square_interval():
    low, high = rstats.std_interval(0.1, 5)
    assert low == pytest.approx(0.1 * math.sqrt(4 / stats.chi2.ppf(0.975, 4)))
    assert high == pytest.approx(0.1 * math.sqrt(4 / stats.chi2.ppf(0.025, 4)))
    assert rstats.std_interval(0.1, 1) is None


# ------------------------------------------------------------------------ tables by hand
def _cfg(run_id, params, values, *, tags=None, keys=("pgd/robust_acc", "robust_acc")):
    """A configuration with ``values`` = {seed: value} for every key in ``keys`` (clean_acc = value + 0.2)."""
    seeds = [SeedInput(seed=s, run_id=f"{run_id}-{s}",
                       metrics={**{k: v for k in keys}, "clean_acc": v + 0.2, "pgd/acc_gap": 1 - v,
                                "clean_acc_gap": 0.5 - v / 2})
             for s, v in values.items()]
    flat = {"defense.name": "syfar", "dataset.name": "digits", "eval.attacks.0.name": "pgd", "seeds": "[0, 1]",
            "scaling.num_workers": "1", **params}
    return ConfigurationInput(run_id=run_id, name=f"run {run_id}", status="FINISHED", params=flat,
                              tags=dict(tags or {}), seeds=seeds, experiment="e")


def test_labels_are_the_params_that_differ():
    configs = [_cfg("a" * 32, {"defense.lambda_sym": "0.5", "train.lr": "0.05"}, {0: 0.5}),
               _cfg("b" * 32, {"defense.lambda_sym": "2.0", "train.lr": "0.05"}, {0: 0.5}),
               _cfg("c" * 32, {"defense.name": "pgd_at", "train.lr": "0.05", "seeds": "[3]"}, {0: 0.5})]
    assert labels(configs) == ["defense.name=syfar, defense.lambda_sym=0.5", "defense.name=syfar, defense.lambda_sym=2",
                               "defense.name=pgd_at"]
    # a distfair.configuration tag is the label; identical configurations get their run id
    configs[0].tags["distfair.configuration"] = "small_lambda"
    twin = _cfg("d" * 32, {"defense.name": "pgd_at", "train.lr": "0.05"}, {0: 0.5})
    assert labels(configs + [twin]) == ["small_lambda", "defense.name=syfar, defense.lambda_sym=2",
                                        "defense.name=pgd_at #cccccccc", "defense.name=pgd_at #dddddddd"]
    # a param that differs outside named blocks labels everyone; long floats are shortened
    lr = [_cfg("e" * 32, {"train.lr": "0.017789248672684851"}, {0: 0.5}), _cfg("f" * 32, {"train.lr": "0.1"}, {0: 0.5})]
    assert labels(lr) == ["train.lr=0.01779", "train.lr=0.1"]
    assert labels([configs[1]]) == ["run " + "b" * 32]                  # nothing differs: the run name


def test_columns_per_evaluation_full_keys_and_families():
    cfg = _cfg("a" * 32, {}, {0: 0.5}, keys=("pgd/robust_acc", "fgsm/robust_acc", "clean_worst_class_acc",
                                            "pgd/worst_class_acc", "fgsm/worst_class_acc", "auc_acc",
                                            "defense_parity/gender", "defense_parity/age"))
    cfg.params["eval.attacks.1.name"] = "fgsm"
    names = [c.name for c in resolve_columns(["robust_acc", "worst_class_acc", "auc_acc", "defense_parity"], [cfg])]
    assert names == ["acc (clean)", "acc (pgd)", "acc (fgsm)", "worst_class_acc (clean)", "worst_class_acc (pgd)",
                     "worst_class_acc (fgsm)", "auc_acc", "defense_parity/age", "defense_parity/gender"]
    cols = resolve_columns(["fgsm/worst_class_acc", "clean_acc"], [cfg])
    assert [(c.name, c.key, c.direction) for c in cols] == [("fgsm/worst_class_acc", "fgsm/worst_class_acc", "max"),
                                                            ("clean_acc", "clean_acc", "max")]
    assert [c.name for c in resolve_columns(["acc"], [cfg], evaluations=["fgsm"])] == ["acc (fgsm)"]
    assert {c.name: c.direction for c in resolve_columns(["acc_gap", "defense_parity"], [cfg])} == {
        "acc_gap (clean)": "min", "acc_gap (pgd)": "min", "defense_parity/age": "min", "defense_parity/gender": "min"}
    with pytest.raises(ValueError, match="no seed run has accuracy"):
        resolve_columns(["accuracy"], [cfg])
    with pytest.raises(ValueError, match="unknown evaluation"):
        resolve_columns(["acc"], [cfg], evaluations=["autoattack"])


STRONG = {s: 0.80 + 0.005 * (s % 3) for s in range(6)}      # 0.800-0.810
WEAK = {s: 0.50 + 0.01 * (s % 3) for s in range(6)}         # 0.500-0.520
CLOSE = {s: 0.79 + 0.01 * (s % 3) for s in range(6)}        # 0.790-0.810: not distinguishable from STRONG


def test_best_cell_is_marked_only_when_significant_after_holm():
    configs = [_cfg("a" * 32, {"defense.lambda_sym": "1"}, STRONG), _cfg("b" * 32, {"defense.lambda_sym": "2"}, WEAK),
               _cfg("c" * 32, {"defense.lambda_sym": "3"}, WEAK)]
    t = build_tables(configs, metrics=["robust_acc", "acc_gap"])
    cell = t.rows[0].cells["acc (pgd)"]
    assert t.mode == "best" and cell.best and cell.n == 6
    assert cell.mean == pytest.approx(np.mean(list(STRONG.values())))
    # acc_gap = 1 - acc: lower is better, the same row is best
    assert t.rows[0].cells["acc_gap (pgd)"].best and not t.rows[1].cells["acc_gap (pgd)"].best
    mine = [c for c in t.comparisons if c.column == "acc (pgd)"]
    assert {(c.row, c.reference) for c in mine} == {("C2", "C1"), ("C3", "C1")}
    assert all(c.result.significant for c in mine)
    # one family over the whole table: Holm over all defined p-values
    ps = [c.result.p for c in t.comparisons]
    assert [c.result.p_holm for c in t.comparisons] == pytest.approx(list(multipletests(ps, method="holm")[1]))
    # a close runner-up: the best is no longer significantly better than every other row
    close = build_tables([configs[0], _cfg("d" * 32, {"defense.lambda_sym": "4"}, CLOSE), configs[1]],
                         metrics=["robust_acc"])
    assert close.rows[0].cells["acc (pgd)"].mean > close.rows[1].cells["acc (pgd)"].mean
    assert not close.rows[0].cells["acc (pgd)"].best
    # with a baseline: the best beats the baseline significantly -> marked; a close best vs the baseline is not
    t = build_tables([configs[1], configs[0], configs[2]], metrics=["robust_acc"], baseline="defense.lambda_sym=2")
    assert t.mode == "baseline" and t.baseline == "C1" and t.rows[0].baseline
    assert {c.reference for c in t.comparisons} == {"C1"} and len(t.comparisons) == 2 * 2    # rows x columns
    assert t.rows[1].cells["acc (pgd)"].best
    t = build_tables([configs[0], _cfg("d" * 32, {"defense.lambda_sym": "4"}, CLOSE)], metrics=["robust_acc"],
                     baseline="C2")
    assert not any(c.best for r in t.rows for c in r.cells.values())
    # the baseline itself best: it must beat every other row
    t = build_tables([configs[0], configs[1], configs[2]], metrics=["robust_acc"], baseline="C1")
    assert t.rows[0].cells["acc (pgd)"].best


def test_low_evidence_is_flagged_in_the_comparisons():
    few = {s: v for s, v in STRONG.items() if s < 3}
    t = build_tables([_cfg("a" * 32, {"defense.lambda_sym": "1"}, few), _cfg("b" * 32, {"defense.lambda_sym": "2"},
                                                                              WEAK)], metrics=["robust_acc"])
    assert all(c.result.low_evidence for c in t.comparisons)
    t = build_tables([_cfg("a" * 32, {"defense.lambda_sym": "1"}, STRONG), _cfg("b" * 32, {"defense.lambda_sym": "2"},
                                                                                WEAK)], metrics=["robust_acc"])
    assert not any(c.result.low_evidence for c in t.comparisons)


def test_baseline_lookup():
    configs = [_cfg("a" * 32, {"defense.lambda_sym": "0.5"}, STRONG), _cfg("b" * 32, {"defense.lambda_sym": "2"}, WEAK),
               _cfg("c" * 32, {"defense.name": "pgd_at"}, WEAK, tags={"distfair.configuration": "plain"})]
    t = build_tables(configs, metrics=["robust_acc"])
    assert find_baseline(t.rows, "pgd_at").key == "C3"            # a differing param value
    assert find_baseline(t.rows, "plain").key == "C3"             # the configuration tag (its label)
    assert find_baseline(t.rows, "bbbbbbbb").key == "C2"          # a short run id
    assert find_baseline(t.rows, "defense.lambda_sym=0.5").key == "C1"
    with pytest.raises(ValueError, match="'syfar' is ambiguous, it matches C1: .*C2: "):
        find_baseline(t.rows, "syfar")
    with pytest.raises(ValueError, match="no configuration matches 'trades'; the configurations are C1: "):
        find_baseline(t.rows, "trades")


def test_sweep_choice_and_pareto_set_are_marked():
    trial = {"defense.lambda_sym": 0.17789248672684851}
    configs = [_cfg("a" * 32, {"defense.lambda_sym": "0.17789248672684851"}, STRONG,
                    tags={"mlflow.parentRunId": "s" * 32, "distfair.trial_params": json.dumps(trial)}),
               _cfg("b" * 32, {"defense.lambda_sym": "2"}, WEAK,
                    tags={"mlflow.parentRunId": "s" * 32, "distfair.trial_params": '{"defense.lambda_sym": 2}'})]
    sweep = SweepInput("s" * 32, "sw", [{"metric": "val_robust_acc"}], {"defense.lambda_sym": "0.17789248672684851"},
                       ["a" * 32, "b" * 32])
    t = build_tables(configs, metrics=["robust_acc"], sweeps=[sweep])
    assert t.rows[0].chosen_by == ["s" * 32] and t.rows[1].chosen_by == []
    assert t.rows[0].pareto_of == t.rows[1].pareto_of == ["s" * 32]


def test_seed_input_from_the_record_or_the_older_artifacts():
    from distfair.report.tables import seed_input

    record = {"class_names": ["a", "b"], "per_class_acc": {"test": {"clean": [1.0, 0.5]}},
              "confusion_matrices": {"test": {"clean": [[2, 0], [1, 1]]}},
              "abstentions": {"test": {"clean": {"abstained": [0, 1], "per_class_rejection": [0.0, 0.33]}}}}
    s = seed_input(3, "r", {"clean_acc": 0.75}, record=record)
    assert (s.seed, s.class_names, s.per_class_acc, s.confusion, s.abstained) == (
        3, ["a", "b"], {"clean": [1.0, 0.5]}, {"clean": [[2, 0], [1, 1]]}, {"clean": [0, 1]})
    # a seed run recorded before result.json existed: per_class_acc.json and confusion_matrices.json
    old = seed_input(3, "r", {}, per_class_acc={"class_names": ["a", "b"], "per_class_acc": {"pgd": [0.5, 0.5]}},
                     confusion={"class_names": ["a", "b"], "matrices": {"pgd": [[1, 1], [1, 1]]},
                                "abstained": {"pgd": [0, 0]}})
    assert (old.class_names, old.per_class_acc, old.confusion, old.abstained) == (
        ["a", "b"], {"pgd": [0.5, 0.5]}, {"pgd": [[1, 1], [1, 1]]}, {"pgd": [0, 0]})
    assert seed_input(0, "r", {}).per_class_acc == {}


def test_files_from_hand_made_tables(tmp_path):
    configs = [_cfg("a" * 32, {"defense.lambda_sym": "1"}, STRONG), _cfg("b" * 32, {"defense.lambda_sym": "2"}, WEAK)]
    for c in configs:
        for s in c.seeds:
            s.class_names = ["x", "y"]
            s.per_class_acc = {"pgd": [0.7, 0.9]}
            s.confusion = {"pgd": [[7, 3], [1, 9]]}
    t = build_tables(configs, metrics=["robust_acc"], baseline="C2")
    figures = draw_figures(t, tmp_path / "figures")
    assert {f.name for f in figures} == {"per_class_pgd.png", "stability.png", "seed_strips.png", "confusion_C1.png",
                                         "asymmetry_C1.png", "confusion_C2.png", "asymmetry_C2.png"}
    report = Report("t", {"description": "hand-made"}, t, figures, "now", "sqlite:///x.db", show_ci=True)
    files = write_report(report, tmp_path)
    md = files["md"].read_text()
    assert "| C1 | defense.lambda_sym=1 | **1.005 ± 0.004 (6) [" in md          # bold: best, significant
    assert "(baseline)" in md and "Holm" in md and "![Stability across seeds](figures/stability.png)" in md
    with files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["table"] for r in rows].count("summary") == 2 * 2 and [r["table"] for r in rows].count("comparison") == 2
    doc = json.loads(files["json"].read_text())
    assert doc["rows"][0]["cells"]["acc (pgd)"]["seed_values"][0] == {"seed": 0, "value": pytest.approx(0.8)}
    assert doc["comparisons"][0]["row"] == "C1" and doc["comparisons"][0]["reference"] == "C2"
    html_text = files["html"].read_text()
    assert html_text.count("data:image/png;base64,") == len(figures) and 'id="results"' in html_text
    assert "src=\"figures/" not in html_text                      # nothing outside the file


# -------------------------------------------------------- the command on a hand-written store
def _seed_result(seed: int, acc: float, val_acc: float, val_gap: float) -> dict:
    """A ``SeedResult.to_dict()``-shaped result whose metric names come from the engine's own
    ``metric_record``; 3 classes, evaluation ``pgd``."""
    from distfair.engine.train import metric_record

    per_class = [acc, min(1.0, acc + 0.1), max(0.0, acc - 0.1)]
    confusion = [[int(round(10 * p)), 10 - int(round(10 * p)), 0] for p in per_class]
    clean = {"acc": min(1.0, acc + 0.2), "worst_class_acc": acc, "acc_gap": 0.2, "group_acc/half/a": acc}
    attacked = {"acc": acc, "worst_class_acc": max(0.0, acc - 0.1), "acc_gap": 0.2, "group_acc/half/a": acc,
                "group_acc/half/b": acc / 2}
    metrics = {**metric_record(clean, [("pgd", attacked)]), "val_robust_acc": val_acc, "val_acc_gap": val_gap}
    return {"seed": seed, "metrics": metrics, "confusion": {"clean": confusion, "pgd": confusion},
            "per_class_acc": {"clean": per_class, "pgd": per_class}, "history": [], "class_names": ["a", "b", "c"],
            "final_model_path": None, "summaries": {}, "checks": [], "flags_path": None,
            "evaluations": [{"name": "pgd", "attack": "pgd"}], "eval_errors": {}, "tags": {}, "abstentions": {},
            "config": {}, "per_eval": {"clean": clean, "pgd": attacked}, "val_per_eval": {}, "summary_metrics": {},
            "timings": {}}


#: trial -> (lambda_sym, {seed: (robust acc, val_robust_acc, val_acc_gap)})
TRIALS = {"t1": (0.5, {s: (0.80 + 0.005 * s, 0.78 + 0.01 * s, 0.10 + 0.02 * s) for s in range(6)}),
          "t2": (2.0, {s: (0.50 + 0.01 * s, 0.60 + 0.01 * s, 0.05 + 0.001 * s) for s in range(6)}),
          "t3": (4.0, {s: (0.40 + 0.01 * s, 0.40 + 0.01 * s, 0.20 + 0.01 * s) for s in range(6)})}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store written with distfair's tracking functions: a two-objective sweep run (max
    val_robust_acc mean, min val_acc_gap std; best t1, Pareto set t1 and t2) over three
    configuration runs with 6 seed runs each, an analysis run with a heatmap, and an
    experiment without configurations."""
    import distfair.evaluation.seed_figures as figures
    from distfair.config import flatten

    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved, figures.seed_figures = figures.seed_figures, lambda *a, **k: []     # the seed figures are not reported
    try:
        exp = tracking.prepare_experiment(uri, "fake_sweep")
        objective = [{"metric": "val_robust_acc", "stat": "mean", "mode": "max", "k": 1.0},
                     {"metric": "val_acc_gap", "stat": "std", "mode": "min", "k": 1.0}]
        sweep = tracking.start_sweep_run(uri, exp, name="fake_sweep-1", params={"objective": objective},
                                         lookup={"distfair.sweep_name": "fake_sweep-1"})
        ids = {}
        for trial, (lam, seeds) in TRIALS.items():
            cfg = {"defense": {"name": "syfar", "lambda_sym": lam}, "dataset": {"name": "synthetic"},
                   "eval": {"attacks": [{"name": "pgd", "attack": "pgd"}]}, "seeds": sorted(seeds)}
            ids[trial] = parent = tracking.start_parent_run(
                uri, exp, flatten(cfg), run_name=trial,
                tags={tracking.TAG_PARENT: sweep, "distfair.trial_params": json.dumps({"defense.lambda_sym": lam})},
                lookup={"distfair.sweep_run": sweep, "distfair.trial_id": trial})
            for seed, values in seeds.items():
                run_id = tracking.get_or_create_seed_run(uri, exp, parent, seed)
                tracking.SeedRunLogger(uri, run_id).log_result(_seed_result(seed, *values), title=f"{trial} {seed}")
            tracking.mark_runs(uri, [parent], "FINISHED")
        pareto = root / "pareto.json"
        pareto.write_text(json.dumps([{"parent_run_id": ids["t1"]}, {"parent_run_id": ids["t2"]}]))
        tracking.log_sweep_outcome(uri, sweep, best={"defense.lambda_sym": 0.5}, metrics={}, artifacts=[pareto],
                                   status="FINISHED")
        # a `distfair analyze` run in the experiment: the report shows its heatmap
        from distfair.plotting import heatmap

        png = heatmap(np.array([[0.5]]), ["gender"], ["at"], "r", root / "pearson_defense_parity.png", vmin=-1, vmax=1)
        tracking.log_analysis_run(uri, exp, run_name="analysis", params={}, metrics={}, tags={}, artifacts=[png])
        tracking.prepare_experiment(uri, "empty")
    finally:
        figures.seed_figures = saved
    return {"uri": uri, "sweep": sweep, "ids": ids}


def test_report_on_a_multi_objective_sweep(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "rep"
    code = cli.main(["report", "--sweep", store["sweep"], "--tracking-uri", store["uri"], "--output-dir", str(out),
                     "--metrics", "robust_acc,val_robust_acc", "--baseline", "4"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = json.loads((out / "tables.json").read_text())
    assert [r["label"] for r in doc["rows"]] == ["defense.lambda_sym=0.5", "defense.lambda_sym=2",
                                                 "defense.lambda_sym=4"]
    assert [r["chosen_on_validation_by"] for r in doc["rows"]] == [[store["sweep"]], [], []]
    assert [bool(r["pareto_set_of"]) for r in doc["rows"]] == [True, True, False]
    assert doc["baseline"] == "C3" and doc["mode"] == "baseline"
    assert "† C1: chosen on validation metrics by sweep fake_sweep-1" in printed
    # t1 beats the baseline t3 on every column with 6 seeds: best and significant
    assert doc["rows"][0]["cells"]["acc (pgd)"]["best"] and doc["rows"][0]["cells"]["val_robust_acc"]["best"]
    seeds_t1 = [v[0] for v in TRIALS["t1"][1].values()]
    assert doc["rows"][0]["cells"]["acc (pgd)"]["mean"] == pytest.approx(np.mean(seeds_t1))
    names = {f["name"] for f in doc["figures"]}
    assert f"pareto_{store['sweep'][:8]}.png" in names and "groups_group_acc_half.png" in names
    assert "per_class_pgd.png" in names and "confusion_C1.png" in names
    assert "analysis_pearson_defense_parity.png" in names                  # the experiment's analysis run
    # logged into the sweep run, under report/
    client = MlflowClient(store["uri"])
    logged = {a.path for a in client.list_artifacts(store["sweep"], "report")}
    assert logged == {f"report/{n}" for n in ("report.html", "report.md", "tables.csv", "tables.json", "figures")}
    assert {a.path for a in client.list_artifacts(store["sweep"], "report/figures")} == {
        f"report/figures/{n}" for n in names}
    assert client.get_run(store["sweep"]).info.status == "FINISHED"
    assert f"sweep run {store['sweep']}, artifacts under report/" in printed


@pytest.mark.parametrize("argv, expected", [
    (["--experiment", "nope"], "MLflow experiment 'nope' does not exist"),
    (["--experiment", "empty"], "experiment 'empty' has no configuration runs"),
    (["--sweep", "0" * 32], "no MLflow run"),
    (["--experiment", "fake_sweep", "--metrics", "accuracy"], "--metrics: no seed run has accuracy"),
    (["--experiment", "fake_sweep", "--baseline", "syfar"], "--baseline: 'syfar' is ambiguous"),
    (["--experiment", "fake_sweep", "--evaluations", "autoattack"], "unknown evaluation(s) autoattack"),
    ([], "give --experiment NAME, --sweep SWEEP_RUN_ID or --runs RUN_ID"),
])
def test_usage_errors_exit_2_with_one_line(store, tmp_path, capsys, argv, expected):
    assert cli.main(["report", "--tracking-uri", store["uri"], "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "report.html").exists()


def test_runs_must_be_configuration_runs(store, tmp_path, capsys):
    seed_run = tracking.seed_run_states(store["uri"], tracking.find_experiment(store["uri"], "fake_sweep"),
                                        store["ids"]["t1"])[0][0]
    for run_id, expected in ((seed_run, f"is a seed run; give its configuration run {store['ids']['t1']}"),
                             (store["sweep"], f"report it with --sweep {store['sweep']}")):
        assert cli.main(["report", "--tracking-uri", store["uri"], "--runs", run_id, "--output-dir",
                         str(tmp_path)]) == 2
        assert expected in capsys.readouterr().err


def test_a_missing_store_is_reported_not_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["report", "--experiment", "x"]) == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "report").exists()


# ------------------------------------------------------------------------- a real browser
def _browser_binaries() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium. Skipped only where no browser can exist; in CI
    (CI=true) a missing browser is a failure: .ci/run installs Debian's chromium."""
    found = _browser_binaries()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        found = None
    if found is None:
        message = "no chromium + chromedriver (apt-get install chromium chromium-driver) or no selenium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    yield driver
    driver.quit()


def _check_in_browser(driver, html_path, figure_names, tables=("results", "comparisons", "seeds-needed",
                                                               "configurations")):
    # a copy somewhere else: the file must not need anything beside it
    alone = html_path.parent.parent / f"alone_{time.time_ns()}.html"
    shutil.copyfile(html_path, alone)
    driver.get(alone.as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    assert len(images) == len(figure_names)
    assert all(complete and width > 0 and src == "data:image/png;base64," for _, complete, width, src in images), images
    for table in tables:
        rows = driver.execute_script(f"const t = document.getElementById('{table}'); "
                                     "return t ? t.querySelectorAll('tbody tr').length : -1")
        assert rows > 0, table
    return driver.execute_script("return document.getElementById('results').innerText")


def test_the_html_opens_in_a_browser(store, tmp_path, browser):
    out = tmp_path / "rep"
    assert cli.main(["report", "--experiment", "fake_sweep", "--tracking-uri", store["uri"], "--output-dir", str(out),
                     "--no-log", "--ci"]) == 0
    doc = json.loads((out / "tables.json").read_text())
    text = _check_in_browser(browser, out / "report.html", [f["name"] for f in doc["figures"]])
    assert "defense.lambda_sym=0.5 †‡" in text


# ----------------------------------------------------- the command on a real `distfair run`
@pytest.fixture(scope="module")
def experiment(tmp_path_factory, ray_session_instance):
    """Two tiny configurations (Sy-FAR and PGD-AT) x 3 seeds x 1 epoch, one `distfair run` of a
    file with a `configurations:` block, called in this process on the session's Ray instance."""
    root = tmp_path_factory.mktemp("report_experiment")
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 1}, "seeds": [0, 1, 2],
           "eval": {**TINY["eval"], "subgroups": {"half": {0: "a", 1: "a", 2: "b"}}},
           "configurations": {"syfar": {"defense.lambda_sym": 0.5}, "pgd_at": {"defense": {"name": "pgd_at"}}}}
    path = root / "tiny_report.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))          # syfar runs first, then pgd_at
    uri = f"sqlite:///{root / 'mlflow.db'}"
    started = time.monotonic()
    proc = call_cli("run", path, "--json", "--tracking-uri", uri, "--experiment", "tiny_report", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)["configurations"]
    return {"uri": uri, "root": root, "parents": {n: r["parent_run_id"] for n, r in runs.items()},
            "run_seconds": time.monotonic() - started}


@pytest.mark.ray
def test_report_on_a_real_experiment(experiment, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = experiment["uri"]
    out = tmp_path / "report"
    code = cli.main(["report", "--experiment", "tiny_report", "--tracking-uri", uri, "--output-dir", str(out),
                     "--baseline", "pgd_at"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    files = {p.name for p in out.iterdir()}
    assert {"report.html", "report.md", "tables.csv", "tables.json", "figures"} <= files
    doc = json.loads((out / "tables.json").read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert list(rows) == ["syfar", "pgd_at"] and rows["pgd_at"]["baseline"] and doc["baseline"] == "C2"
    assert [c["name"] for c in doc["columns"]][:3] == ["acc (clean)", "acc (pgd5)", "acc (fgsm)"]
    # the cells are the parent runs' statistics, recomputed from the seed runs MLflow holds
    client = MlflowClient(uri)
    for label, parent in experiment["parents"].items():
        pm = client.get_run(parent).data.metrics
        cells = rows[label]["cells"]
        assert rows[label]["run_id"] == parent and rows[label]["seeds"] == [0, 1, 2]
        for column, key in (("acc (pgd5)", "pgd5/robust_acc"), ("worst_class_acc (fgsm)", "fgsm/worst_class_acc"),
                            ("nsd (clean)", "clean_nsd")):
            assert cells[column]["n"] == 3
            assert cells[column]["mean"] == pytest.approx(pm[f"{key}_mean"])
            assert cells[column]["std"] == pytest.approx(pm[f"{key}_std"])
    # the comparisons are SciPy's on the same seed values
    exp_id = tracking.find_experiment(uri, "tiny_report")
    values = {label: {s: m["pgd5/robust_acc"] for s, (_, m) in tracking.finished_seed_runs(uri, exp_id, p).items()}
              for label, p in experiment["parents"].items()}
    comparison = next(c for c in doc["comparisons"] if c["column"] == "acc (pgd5)")
    assert (comparison["row"], comparison["reference"], comparison["n"]) == ("C1", "C2", 3)
    syfar, pgd = [values["syfar"][s] for s in range(3)], [values["pgd_at"][s] for s in range(3)]
    if np.std(syfar) + np.std(pgd) > 0:
        assert comparison["welch_p"] == pytest.approx(stats.ttest_ind(syfar, pgd, equal_var=False).pvalue)
    assert comparison["paired"] and comparison["low_evidence"]
    assert len(doc["comparisons"]) == len(doc["columns"])
    figures = {f["name"] for f in doc["figures"]}
    assert {"per_class_pgd5.png", "stability.png", "seed_strips.png", "groups_group_acc_half.png", "confusion_C1.png",
            "asymmetry_C2.png"} <= figures
    assert {p.name for p in (out / "figures").iterdir()} == figures
    # printed: the table, where the files are, the report run
    assert "| C1 | syfar |" in printed and f"Files: {out}/" in printed and "Look at it: mlflow ui" in printed
    # logged: one report run in the experiment with the same files
    reports = client.search_runs([exp_id], filter_string="tags.`distfair.kind` = 'report'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    run = reports[0]
    assert f"report run {run.info.run_id}" in printed and run.data.params["baseline"] == "pgd_at"
    assert "| C1 | syfar |" in run.data.tags["mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "report.md", "tables.csv",
                                                                       "tables.json", "figures"}
    assert {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "figures")} == figures
    # the report run is no configuration: a second report sees the same two rows
    assert [c["run_id"] for c in tracking.report_configurations(uri, exp_id)] == list(experiment["parents"].values())
    print(f"[timing] distfair run (2 configurations x 3 seeds): {experiment['run_seconds']:.1f} s", file=sys.stderr)


@pytest.mark.ray
def test_the_real_report_opens_in_a_browser(experiment, tmp_path, browser):
    """Every image loaded, every table there (the report of the real experiment, not logged)."""
    out = tmp_path / "report"
    assert cli.main(["report", "--experiment", "tiny_report", "--tracking-uri", experiment["uri"], "--output-dir",
                     str(out), "--baseline", "pgd_at", "--no-log"]) == 0
    doc = json.loads((out / "tables.json").read_text())
    text = _check_in_browser(browser, out / "report.html", [f["name"] for f in doc["figures"]])
    assert "pgd_at (baseline)" in text and "syfar" in text


@pytest.mark.ray
def test_report_of_runs_prints_one_json_object(experiment, tmp_path, capfd):
    ids = list(experiment["parents"].values())
    code = cli.main(["report", "--runs", *ids, "--metrics", "robust_acc,worst_class_acc,nsd", "--tracking-uri",
                     experiment["uri"], "--output-dir", str(tmp_path / "r"), "--json", "--no-log",
                     "--evaluations", "pgd5"])
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)                                          # stdout is exactly one JSON object
    assert [c["name"] for c in doc["columns"]] == ["acc (pgd5)", "worst_class_acc (pgd5)", "nsd (pgd5)"]
    assert [r["run_id"] for r in doc["rows"]] == ids and doc["logged"] is None
    assert doc["files"]["html"] == str(tmp_path / "r" / "report.html") and doc["mode"] == "best"
    assert doc["scope"]["kind"] == "runs" and "| C1 | syfar |" in err


@pytest.mark.ray
def test_the_printed_mlflow_link_opens_the_runs_table(experiment, tmp_path, browser):
    """MLflow 3's UI opens an experiment on its GenAI overview (traces, no runs): the link every
    command prints must open the runs table of the experiment, with the configuration runs in
    it, in a real browser against a real ``mlflow server`` over the same store."""
    import socket
    import urllib.request

    from mlflow import MlflowClient

    from conftest import stop_process_group

    uri, exp_id = experiment["uri"], tracking.find_experiment(experiment["uri"], "tiny_report")
    printed = tracking.ui_command(uri, exp_id)
    assert printed.startswith(f"mlflow ui --backend-store-uri {uri}")
    assert tracking.ui_url(tracking.LOCAL_UI, exp_id) in printed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "ui.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
                time.sleep(1)
        browser.get(tracking.ui_url(f"http://127.0.0.1:{port}", exp_id))
        names = [run.info.run_name for run in
                 MlflowClient(uri).search_runs([exp_id], f"tags.`{tracking.TAG_ROLE}` = 'configuration'")]
        assert len(names) == 2
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not all(n in text for n in names):
            time.sleep(1)
            text = browser.find_element("tag name", "body").text
        assert all(n in text for n in names), text[:2000]
        assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
        assert "Token Usage" not in text                        # not the GenAI overview
    finally:
        stop_process_group(server, grace_s=10)
        log.close()
