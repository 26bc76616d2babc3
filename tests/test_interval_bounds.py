"""The seed interval of a metric bounded to [0, 1] (an accuracy, a gap of accuracies, a rate)
is the Student-t interval clipped to [0, 1]; metrics without a declared range (losses, nsd,
the grid-dependent AUCs, timings) keep the plain t-interval. Hand-computed values; no MLflow,
no Ray."""
from __future__ import annotations

import math

import pytest

from distfair.results import record
from distfair.metrics import aggregate_seed_metrics, metric_family, metric_range, summarize
from distfair.report.tables import Cell

T1 = 12.706204736174707           # t_{0.975, 1}: the quantile of two seeds
# [0.3, 0.9]: mean 0.6, sample std sqrt(0.18) = 0.424264..., half width T1 * 0.424264 / sqrt(2) = 3.811861
HALF = T1 * math.sqrt(0.18) / math.sqrt(2)


def test_hand_values_two_seeds_clip_to_the_unit_interval():
    assert HALF == pytest.approx(3.8118614, abs=1e-6)
    plain = summarize([0.3, 0.9])
    assert (plain["ci95_low"], plain["ci95_high"]) == pytest.approx((0.6 - HALF, 0.6 + HALF))   # [-3.21, 4.41]
    clipped = summarize([0.3, 0.9], bounds=(0.0, 1.0))
    assert (clipped["ci95_low"], clipped["ci95_high"]) == (0.0, 1.0)
    assert clipped["mean"] == pytest.approx(0.6) and clipped["std"] == pytest.approx(math.sqrt(0.18))
    # one side only: [0.85, 0.95] -> 0.9 -+ T1 * 0.0707107 / sqrt(2) = 0.9 -+ 0.635310 -> [0.264690, 1]
    one = summarize([0.85, 0.95], bounds=(0.0, 1.0))
    assert one["ci95_low"] == pytest.approx(0.9 - T1 * math.sqrt(0.005) / math.sqrt(2))
    assert one["ci95_low"] == pytest.approx(0.264690, abs=1e-6) and one["ci95_high"] == 1.0
    # well inside the range nothing changes: [0.5, 0.52, 0.54] -> 0.52 -+ 4.302653 * 0.02 / sqrt(3)
    inside = summarize([0.5, 0.52, 0.54], bounds=(0.0, 1.0))
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert (inside["ci95_low"], inside["ci95_high"]) == pytest.approx((0.52 - half, 0.52 + half))
    # the interval of a single seed stays undefined
    assert summarize([0.7], bounds=(0.0, 1.0))["ci95_low"] is None


@pytest.mark.parametrize("key, family", [
    ("robust_acc", "robust_acc"), ("pgd20/robust_acc", "robust_acc"), ("clean_acc", "acc"), ("val_clean_acc", "acc"),
    ("val_robust_acc", "robust_acc"), ("pgd_1e-4/worst_class_acc", "worst_class_acc"),
    ("clean_worst10_acc", "worst10_acc"), ("group_acc/gender/F", "group_acc"), ("pgd20/group_gap/gender", "group_gap"),
    ("clean_false_rejection_rate", "false_rejection_rate"), ("defense_parity/accent", "defense_parity"),
    ("val_asym_gap", "asym_gap"), ("train_loss", "train_loss"), ("fgsm/nsd", "nsd"),
])
def test_metric_family_follows_the_naming_rules(key, family):
    assert metric_family(key) == family


def test_the_range_is_declared_per_metric_family():
    for key in ("robust_acc", "fgsm/worst_class_acc", "clean_acc", "val_worst_class_acc", "acc_gap", "max_asym_gap",
                "worst10_acc", "tgt_std", "rejection_rate", "pgd/group_acc/gender/F", "group_gap/accent",
                "max_bipartition_asym", "target_success_rate", "stage_acc/smoothed"):
        assert metric_range(key) == (0.0, 1.0), key
    for key in ("nsd", "sym_loss", "val_sym", "val_soft_sym", "train_loss", "train_time_s", "auc_acc",
                "defense_parity/gender", "fpr_parity/age", "auc_fpr", "lr", "some_new_metric"):
        assert metric_range(key) is None, key


def test_aggregate_clips_bounded_metrics_only():
    seeds = [{"robust_acc": 0.3, "pgd20/robust_acc": 0.3, "clean_acc": 0.3, "acc_gap": 0.3, "nsd": 0.3,
              "train_loss": 0.3, "sym_loss": 0.3, "defense_parity/gender": 0.3, "group_acc/gender/F": 0.3},
             {"robust_acc": 0.9, "pgd20/robust_acc": 0.9, "clean_acc": 0.9, "acc_gap": 0.9, "nsd": 0.9,
              "train_loss": 0.9, "sym_loss": 0.9, "defense_parity/gender": 0.9, "group_acc/gender/F": 0.9}]
    out = aggregate_seed_metrics(seeds)
    for name in ("robust_acc", "pgd20/robust_acc", "clean_acc", "acc_gap", "group_acc/gender/F"):
        assert (out[name]["ci95_low"], out[name]["ci95_high"]) == (0.0, 1.0), name
    for name in ("nsd", "train_loss", "sym_loss", "defense_parity/gender"):
        assert (out[name]["ci95_low"], out[name]["ci95_high"]) == pytest.approx((0.6 - HALF, 0.6 + HALF)), name
    # a negative value of an unbounded metric (a loss difference) keeps its interval below 0
    neg = aggregate_seed_metrics([{"train_loss_delta": -0.5}, {"train_loss_delta": -0.1}])["train_loss_delta"]
    assert neg["ci95_low"] < -1 and neg["ci95_high"] > 1


def test_the_configuration_record_and_the_report_cells_clip_the_same_way():
    def seed(s, v):
        return {"seed": s, "values": [
            {"split": "test", "evaluation": "pgd20", "metric": "acc", "attribute": None, "group": None, "stage": None,
             "epoch": None, "step": 3, "value": v, "mlflow_key": "pgd20/robust_acc", "mlflow_aliases": ["robust_acc"]},
            {"split": "test", "evaluation": "pgd20", "metric": "nsd", "attribute": None, "group": None, "stage": None,
             "epoch": None, "step": 3, "value": v, "mlflow_key": "pgd20/nsd", "mlflow_aliases": ["nsd"]}]}

    doc = record.configuration_record({}, [seed(0, 0.3), seed(1, 0.9)])
    acc = record.find_entry(doc, split="test", evaluation="pgd20", metric="acc")
    assert (acc["ci95_low"], acc["ci95_high"]) == (0.0, 1.0)
    nsd = record.find_entry(doc, split="test", evaluation="pgd20", metric="nsd")
    assert (nsd["ci95_low"], nsd["ci95_high"]) == pytest.approx((0.6 - HALF, 0.6 + HALF))
    # the parent run's statistics (aggregate_seed_metrics) are the record's
    parent = aggregate_seed_metrics([{"robust_acc": 0.3}, {"robust_acc": 0.9}])["robust_acc"]
    assert (parent["ci95_low"], parent["ci95_high"]) == (acc["ci95_low"], acc["ci95_high"])
    # and so are the report's cells (distfair report --ci)
    cell = Cell.of({0: 0.3, 1: 0.9}, "pgd20/robust_acc")
    assert (cell.ci95_low, cell.ci95_high) == (0.0, 1.0)
    loose = Cell.of({0: 0.3, 1: 0.9}, "pgd20/nsd")
    assert (loose.ci95_low, loose.ci95_high) == pytest.approx((0.6 - HALF, 0.6 + HALF))
