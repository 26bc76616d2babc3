"""The metric names (distfair.results.names): one module writes and reads every MLflow metric key.

Hand-written expectations: each kind of key parsed into its fields, the round trip over every
key the engine and the result records produce, the statistics' names, the errors on keys the
runs never log, and the declared ranges. No MLflow, no Ray."""
from __future__ import annotations

import pytest

from distfair import metrics
from distfair.config import space
from distfair.engine.train import metric_record, validation_record
from distfair.report import columns, tables
from distfair.results import names, record
from distfair.results.names import MetricKey


def _evaluation(acc: float) -> dict:
    """One evaluation's metric dict with every kind of name an evaluation reports."""
    return {"acc": acc, "worst_class_acc": 0.1, "acc_gap": 0.2, "nsd": 0.3, "worst10_acc": 0.1, "max_asym_gap": 0.2,
            "sym_loss": 1.2, "soft_sym_loss": 0.4, "tgt_max": 0.3, "tgt_min": None, "tgt_std": 0.01,
            "per_class_acc": [0.1, 0.2], "rejection_rate": 0.05, "stage_acc/smoothed": 0.4,
            "group_acc/gender/F": 0.3, "group_gap/gender": 0.1, "max_group_asym/gender": 0.2,
            "group_rejection/gender/M": 0.0, "max_bipartition_asym": 0.2, "target_success_rate": 0.3}


CLEAN = {**_evaluation(0.9), "false_rejection_rate": 0.05}
PER_EVAL = {"clean": CLEAN, "pgd20": _evaluation(0.5), "fgsm": _evaluation(0.6), "pgd_1e-4": _evaluation(0.7)}
EVALUATIONS = ["pgd20", "fgsm", "pgd_1e-4"]
HISTORY = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1, "defense_weight": 1.0, "val_clean_acc": 0.5,
            "val_robust_acc": 0.3, "val_sym": 0.4, "val_soft_sym": 0.2, "val_asym_gap": 0.1, "epoch_time_s": 1.0}
           for e in range(2)]
SUMMARY_METRICS = {"test": {"auc_acc": 0.4, "group_auc_acc/gender/F": 0.3, "defense_parity/gender": 0.1,
                            "auc_fpr": 0.2, "fpr_parity/age": 0.1},
                   "val": {"auc_acc": 0.41, "defense_parity/gender": 0.12}}


def _seed_record() -> dict:
    return record.seed_record({
        "seed": 0, "history": HISTORY, "evaluations": [{"name": n, "attack": "pgd"} for n in EVALUATIONS],
        "per_eval": PER_EVAL, "val_per_eval": {"clean": CLEAN, "pgd20": PER_EVAL["pgd20"]},
        "summary_metrics": SUMMARY_METRICS, "timings": {"train_time_s": 2.0, "val_time_s": 1.0, "eval_time_s": 3.0}})


def _produced_keys() -> set[str]:
    """Every MLflow key the engine's records and the seed record name (aliases included)."""
    keys = set(metric_record(CLEAN, [(n, PER_EVAL[n]) for n in EVALUATIONS]))
    keys |= set(validation_record({"clean": CLEAN, "pgd20": PER_EVAL["pgd20"]}, "pgd20"))
    keys |= set(validation_record({"clean": CLEAN}, None))
    keys |= {k for row in _seed_record()["values"] for k in [row["mlflow_key"], *row["mlflow_aliases"]]}
    return keys


# -------------------------------------------------------------------------- each kind of key
@pytest.mark.parametrize("key, fields, metric, family, nested", [
    ("clean_acc", ("test", "clean", "acc", None), "acc", "acc", {}),
    ("pgd20/robust_acc", ("test", "pgd20", "robust_acc", None), "acc", "acc", {}),
    ("robust_acc", ("test", None, "robust_acc", None), "acc", "acc", {}),
    ("worst_class_acc", ("test", None, "worst_class_acc", None), "worst_class_acc", "worst_class_acc", {}),
    ("pgd_1e-4/worst_class_acc", ("test", "pgd_1e-4", "worst_class_acc", None), "worst_class_acc",
     "worst_class_acc", {}),
    ("clean_false_rejection_rate", ("test", "clean", "false_rejection_rate", None), "false_rejection_rate",
     "false_rejection_rate", {}),
    ("clean_group_acc/gender/F", ("test", "clean", "group_acc/gender/F", None), "group_acc/gender/F", "group_acc",
     {"attribute": "gender", "group": "F"}),
    ("pgd20/group_gap/gender", ("test", "pgd20", "group_gap/gender", None), "group_gap/gender", "group_gap",
     {"attribute": "gender"}),
    ("group_gap/gender", ("test", None, "group_gap/gender", None), "group_gap/gender", "group_gap",
     {"attribute": "gender"}),
    ("aa/stage_acc/apgd-ce", ("test", "aa", "stage_acc/apgd-ce", None), "stage_acc/apgd-ce", "stage_acc",
     {"stage": "apgd-ce"}),
    ("auc_acc", ("test", None, "auc_acc", None), "auc_acc", "auc_acc", {}),
    ("defense_parity/accent", ("test", None, "defense_parity/accent", None), "defense_parity/accent",
     "defense_parity", {"attribute": "accent"}),
    ("val_clean_acc", ("val", "clean", "acc", None), "acc", "acc", {}),
    ("val_robust_acc", ("val", None, "robust_acc", None), "acc", "acc", {}),
    ("val_clean_group_gap/gender", ("val", "clean", "group_gap/gender", None), "group_gap/gender", "group_gap",
     {"attribute": "gender"}),
    ("val_worst_class_acc", ("val", None, "worst_class_acc", None), "worst_class_acc", "worst_class_acc", {}),
    ("val_sym", ("val", None, "sym", None), "sym", "sym", {}),
    ("val_auc_acc", ("val", None, "auc_acc", None), "auc_acc", "auc_acc", {}),
    ("train_loss", ("train", None, "train_loss", None), "train_loss", "train_loss", {}),
    ("lr", ("train", None, "lr", None), "lr", "lr", {}),
    ("defense_weight", ("train", None, "defense_weight", None), "defense_weight", "defense_weight", {}),
    ("finish_time_s", ("train", None, "finish_time_s", None), "finish_time_s", "finish_time_s", {}),
    ("val_time_s", ("train", None, "val_time_s", None), "val_time_s", "val_time_s", {}),
    ("epoch_time_s", ("train", None, "epoch_time_s", None), "epoch_time_s", "epoch_time_s", {}),
])
def test_each_kind_of_key_parses_into_its_fields(key, fields, metric, family, nested):
    parsed = MetricKey.parse(key)
    assert (parsed.split, parsed.evaluation, parsed.name, parsed.statistic) == fields
    assert parsed == MetricKey(*fields)
    assert (parsed.metric, parsed.family, parsed.fields) == (metric, family, nested)
    assert parsed.mlflow_key() == str(parsed) == key


@pytest.mark.parametrize("key, fields", [
    ("val_worst_class_acc_mean_minus_std", ("val", None, "worst_class_acc", "mean_minus_std")),
    ("val_worst_class_acc_mean", ("val", None, "worst_class_acc", "mean")),
    ("pgd20/robust_acc_ci95_low", ("test", "pgd20", "robust_acc", "ci95_low")),
    ("clean_acc_ci95_high", ("test", "clean", "acc", "ci95_high")),
    ("tgt_std_std", ("test", None, "tgt_std", "std")),
    ("tgt_max_max", ("test", None, "tgt_max", "max")),
    ("group_gap/gender_median", ("test", None, "group_gap/gender", "median")),
    ("train_time_s_mean", ("train", None, "train_time_s", "mean")),
    ("val_robust_acc_n", ("val", None, "robust_acc", "n")),
])
def test_a_statistic_suffix_is_read_when_asked_for(key, fields):
    parsed = MetricKey.parse(key, statistic=True)
    assert (parsed.split, parsed.evaluation, parsed.name, parsed.statistic) == fields
    assert parsed.mlflow_key() == key


def test_without_statistic_a_stat_like_ending_is_part_of_the_name():
    assert MetricKey.parse("tgt_std") == MetricKey("test", None, "tgt_std")
    assert MetricKey.parse("tgt_min").statistic is None
    assert MetricKey.parse("worst_class_acc_mean") == MetricKey("test", None, "worst_class_acc_mean")


def test_of_renames_an_attacked_accuracy_and_builds_todays_keys():
    assert MetricKey.of("test", "clean", "acc").mlflow_key() == "clean_acc"
    assert MetricKey.of("test", "pgd20", "acc").mlflow_key() == "pgd20/robust_acc"
    assert MetricKey.of("test", None, "acc").mlflow_key() == "robust_acc"
    assert MetricKey.of("val", "clean", "acc").mlflow_key() == "val_clean_acc"
    assert MetricKey.of("val", None, "acc").mlflow_key() == "val_robust_acc"
    assert MetricKey.of("val", None, "group_gap/gender").mlflow_key() == "val_group_gap/gender"
    assert MetricKey.of("test", "fgsm", "worst_class_acc", "mean").mlflow_key() == "fgsm/worst_class_acc_mean"
    assert MetricKey.of("val", None, "acc").with_statistic("mean").mlflow_key() == "val_robust_acc_mean"
    assert MetricKey.parse("val_robust_acc_mean", statistic=True).with_statistic(None).mlflow_key() == "val_robust_acc"


def test_the_evaluations_given_decide_what_a_first_segment_is():
    assert MetricKey.parse("group_gap/gender", evaluations=["pgd20"]).evaluation is None
    assert MetricKey.parse("pgd20/group_gap/gender", evaluations=["pgd20"]).evaluation == "pgd20"
    with pytest.raises(ValueError, match="neither an evaluation"):
        MetricKey.parse("fgsm/robust_acc", evaluations=["pgd20"])


# -------------------------------------------------------------------------------- round trip
def test_round_trip_over_every_key_the_engine_and_the_records_produce():
    keys = _produced_keys()
    # the kinds are all there: clean, every attack, the primary bare, validation, curves, training, summaries
    assert {"clean_acc", "pgd20/robust_acc", "robust_acc", "pgd_1e-4/group_acc/gender/F", "fgsm/stage_acc/smoothed",
            "val_clean_acc", "val_robust_acc", "val_group_gap/gender", "val_sym", "train_loss", "lr",
            "defense_weight", "epoch_time_s", "auc_acc", "val_defense_parity/gender", "eval_time_s"} <= keys
    assert len(keys) > 100
    for key in sorted(keys):
        parsed = MetricKey.parse(key)
        assert parsed.mlflow_key() == key, key
        assert MetricKey.parse(key, evaluations=EVALUATIONS) == parsed, key
        for stat in names.STATISTICS:
            with_stat = MetricKey.parse(names.stat_name(key, stat), statistic=True)
            assert with_stat == parsed.with_statistic(stat), (key, stat)
            assert with_stat.mlflow_key() == f"{key}_{stat}"


def test_the_records_rows_agree_with_the_parsed_keys():
    """A seed record row's split/evaluation/metric fields are what its key says (the primary
    evaluation's bare alias parses as evaluation None, the record names the entry)."""
    for row in _seed_record()["values"]:
        if row["epoch"] is not None or row["split"] == "train" or row["mlflow_key"] in names.TIMINGS:
            continue
        parsed = MetricKey.parse(row["mlflow_key"])
        assert parsed.split == row["split"], row
        assert parsed.family == row["metric"], row
        assert parsed.evaluation in (row["evaluation"], None), row
        nested = {f: row[f] for f in ("attribute", "group", "stage") if row[f] is not None}
        assert parsed.fields == nested, row


def test_round_trip_over_a_real_seed_run(tiny_cfg_dict, tmp_path):
    from distfair.config import validate
    from distfair.engine import run_seed

    tiny_cfg_dict["train"]["epochs"] = 1
    tiny_cfg_dict["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    result = run_seed(validate(tiny_cfg_dict, "tiny.yaml"), 0, workdir=tmp_path).to_dict()
    doc = record.seed_record(result)
    keys = set(result["metrics"]) | {k for r in doc["values"] for k in [r["mlflow_key"], *r["mlflow_aliases"]]}
    assert {"clean_group_acc/half/a", "pgd5/robust_acc", "val_robust_acc", "train_loss"} <= keys
    for key in keys:
        assert MetricKey.parse(key).mlflow_key() == key, key


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("key, match", [
    ("", "non-empty"),
    (None, "non-empty"),
    ("clean_", "empty metric name"),
    ("val_", "empty metric name"),
    ("val_clean_", "empty metric name"),
    ("pgd20/", "empty metric name"),
    ("pgd20//robust_acc", "empty metric name"),
    ("group_gap/", "empty metric name"),
    ("clean_group_acc/gender/", "empty metric name"),
    ("/robust_acc", "empty"),
    ("pgd20/acc", "named 'robust_acc'"),
    ("acc", "named 'robust_acc'"),
    ("val_acc", "named 'robust_acc'"),
    ("val_pgd20/robust_acc", "validation split logs the clean and the primary"),
])
def test_malformed_keys_are_refused(key, match):
    with pytest.raises(ValueError, match=match):
        MetricKey.parse(key)


@pytest.mark.parametrize("key", ["robust_acc", "_mean", "val_robust_acc_p99", "mean"])
def test_a_missing_statistic_is_refused(key):
    with pytest.raises(ValueError, match="no statistic suffix"):
        MetricKey.parse(key, statistic=True)


def test_malformed_fields_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        MetricKey("validation", None, "robust_acc")
    with pytest.raises(ValueError, match="non-empty string"):
        MetricKey("test", None, "")
    with pytest.raises(ValueError, match="evaluation must be None or a non-empty string"):
        MetricKey("test", "", "robust_acc")
    with pytest.raises(ValueError, match="no evaluation"):
        MetricKey("train", "clean", "train_loss")
    with pytest.raises(ValueError, match="unknown statistic"):
        MetricKey("test", None, "robust_acc", "p99")
    with pytest.raises(AttributeError):
        MetricKey("test", None, "robust_acc").name = "x"          # frozen


# ---------------------------------------------------------------------------- statistics
def test_the_statistics_are_defined_once():
    assert names.SEED_STATISTICS == ("mean", "std", "min", "max", "ci95_low", "ci95_high")
    assert names.OBJECTIVE_STATISTICS == ("mean", "std", "min", "max", "median", "mean_minus_std", "mean_plus_std",
                                          "ci95_low", "ci95_high")
    assert names.SPREAD_STATISTICS == ("mean", "std", "n", "ci95_low", "ci95_high")
    assert set(names.STATISTICS) == set(names.OBJECTIVE_STATISTICS) | {"n", names.CI95_HALFWIDTH}
    # an adaptive configuration's final half-width parses as a statistic of its metric
    key = names.MetricKey.parse("val_worst_class_acc_ci95_halfwidth", statistic=True)
    assert (key.split, key.name, key.statistic) == ("val", "worst_class_acc", "ci95_halfwidth")
    assert record.STATS is names.SEED_STATISTICS and space.STATS is names.OBJECTIVE_STATISTICS
    assert set(names.SEED_STATISTICS) <= set(metrics.summarize([0.1, 0.2]))
    assert names.stat_name("val_worst_class_acc", "mean_minus_std") == "val_worst_class_acc_mean_minus_std"
    assert space.Target("val_worst_class_acc", "mean_minus_std").name == "val_worst_class_acc_mean_minus_std"


def test_config_space_and_report_use_the_names_module():
    for fn in ("stat_name", "metric_role", "matching_test_metric", "known_val_metric", "known_test_metric",
               "known_metric", "validation_counterpart"):
        assert getattr(space, fn) is getattr(names, fn), fn
    assert space.VAL_PREFIX == names.VAL_PREFIX == metrics.VAL_PREFIX == "val_"
    assert names.CLEAN_PREFIX == metrics.CLEAN_PREFIX == "clean_"
    assert columns.DIRECTION is names.DIRECTION and tables.DEFAULT_METRICS is names.DEFAULT_REPORT_METRICS
    assert record.evaluation_label is names.evaluation_label and record.TRAIN_ATTACK == names.TRAIN_ATTACK


# ------------------------------------------------------------------------------- the roles
def test_roles_and_counterparts():
    assert [names.metric_role(k) for k in ("val_robust_acc", "robust_acc", "train_loss", "lr", "val_time_s")] == [
        "validation", "test", "training", "training", "training"]
    assert names.matching_test_metric("val_robust_acc") == "robust_acc"
    assert names.matching_test_metric("val_clean_acc") == "clean_acc"
    assert names.matching_test_metric("robust_acc") is None
    assert names.validation_counterpart("pgd20/worst_class_acc", ["pgd20", "fgsm"]) == "val_worst_class_acc"
    assert names.validation_counterpart("fgsm/worst_class_acc", ["pgd20", "fgsm"]) is None
    assert names.known_val_metric("val_group_gap/gender") and not names.known_val_metric("val_group_gap/")
    assert not names.known_val_metric("val_clean_robust_acc")
    assert names.known_test_metric("fgsm/nsd", ["fgsm"]) and not names.known_test_metric("pgd/nsd", ["fgsm"])


def test_prefix_helpers_and_labels():
    assert [names.key_prefix(s, e) for s, e in [("test", "clean"), ("test", "pgd20"), ("test", None),
                                                ("val", "clean"), ("val", None)]] == [
        "clean_", "pgd20/", "", "val_clean_", "val_"]
    assert [names.unprefixed(k) for k in ("val_clean_acc", "val_robust_acc", "clean_nsd", "pgd20/nsd")] == [
        "acc", "robust_acc", "nsd", "pgd20/nsd"]
    assert names.split_fields("group_acc/gender/F") == ("group_acc", {"attribute": "gender", "group": "F"})
    assert names.split_fields("worst_class_acc") == ("worst_class_acc", {})
    assert names.evaluation_label("robust_acc", {"pgd20/robust_acc"}, "pgd20") == "robust_acc (pgd20)"
    assert names.evaluation_label("clean_acc", {"pgd20/robust_acc"}, "pgd20") == "clean_acc"
    assert names.headline(["nsd", "group_gap/b", "group_gap/a", "clean_acc", "x"], names.MAIN_METRICS
                          + names.MAIN_FAMILIES) == ["clean_acc", "nsd", "group_gap/a", "group_gap/b"]


# ---------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("key, family, bounds", [
    ("robust_acc", "robust_acc", (0.0, 1.0)),
    ("pgd20/robust_acc", "robust_acc", (0.0, 1.0)),
    ("val_clean_acc", "acc", (0.0, 1.0)),
    ("clean_worst10_acc", "worst10_acc", (0.0, 1.0)),
    ("pgd/group_acc/gender/F", "group_acc", (0.0, 1.0)),
    ("val_asym_gap", "asym_gap", (0.0, 1.0)),
    ("clean_false_rejection_rate", "false_rejection_rate", (0.0, 1.0)),
    ("stage_acc/smoothed", "stage_acc", (0.0, 1.0)),
    ("nsd", "nsd", None),
    ("fgsm/sym_loss", "sym_loss", None),
    ("defense_parity/accent", "defense_parity", None),
    ("auc_acc", "auc_acc", None),
    ("train_loss", "train_loss", None),
    ("some_new_metric", "some_new_metric", None),
])
def test_ranges_follow_the_family(key, family, bounds):
    assert names.metric_family(key) == family
    assert names.metric_range(key) == bounds
    assert names.METRIC_RANGES.get(family) == bounds


def test_the_range_rules_are_the_seed_statistics_own():
    """Defined once, in distfair.metrics (the seed statistics clip with them; metrics cannot import
    results), and the same objects here."""
    assert names.metric_range is metrics.metric_range and names.metric_family is metrics.metric_family
    assert names.METRIC_RANGES is metrics.METRIC_RANGES
    assert names.UNIT_INTERVAL_FAMILIES.isdisjoint(names.UNBOUNDED_FAMILIES)
    # every family an evaluation reports and every nested family has a declared range (or is unbounded)
    assert set(names.EVALUATION_METRICS) | {names.ROBUST_ACC} <= set(names.METRIC_RANGES)
    assert set(names.NESTED_FAMILIES) <= set(names.METRIC_RANGES)
    out = metrics.aggregate_seed_metrics([{"robust_acc": 0.3, "nsd": 0.3}, {"robust_acc": 0.9, "nsd": 0.9}])
    assert (out["robust_acc"]["ci95_low"], out["robust_acc"]["ci95_high"]) == (0.0, 1.0)
    assert out["nsd"]["ci95_low"] < 0.0
    unclipped = metrics.aggregate_seed_metrics([{"robust_acc": 0.3}, {"robust_acc": 0.9}], bounds=None)
    assert unclipped["robust_acc"]["ci95_low"] < 0.0


def test_defense_parity_is_a_test_metric_not_a_training_value():
    """``defense_parity/<attr>`` (speech paper 003 §3.1, Eq. 1) starts like a defense's training
    value (``defense_...``) but is a test metric: a sweep reports its test value beside the
    chosen configuration (it was once taken for training and left out)."""
    assert names.metric_role("defense_parity/gender") == "test"
    assert names.is_training_key("defense_parity/gender") is False
    assert names.is_training_key("defense_lambda") is True
    assert names.metric_role("defense_lambda") == "training"
