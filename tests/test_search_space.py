"""The ``space`` block (parse, validate, judge) and the sweep helpers that need no Ray cluster:
load_sweep, choose, sweep_identity, sweep_dir_name and groups_and_concurrency."""
from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import yaml

from distfair.config import ConfigError, flatten, load_config
from distfair.distributed.sweep import groups_and_concurrency
from distfair.experiment.sweep import sweep_dir_name
from distfair.metrics import summarize
from distfair.config.space import (STATS, Dimension, EarlyStopping, SweepSpec, Target, known_metric,
                                   known_val_metric, metric_role, parse_space, pareto_front)
from distfair.experiment.sweep import TrialOutcome, choose, load_sweep, sweep_identity

REPO = Path(__file__).resolve().parent.parent
KEYS = {"train.lr", "train.batch_size", "train.optimizer", "attack.eps", "attack.steps", "defense.lambda_sym",
        "defense.name"}
EVAL_NAMES = ["pgd20", "fgsm"]
LR = {"type": "float", "low": 0.001, "high": 0.1, "log": True}
OBJECTIVE = {"metric": "val_worst_class_acc"}


def parse(raw):
    return parse_space(raw, config_keys=KEYS, eval_names=EVAL_NAMES)


def space(params=None, objective=None, search=None, **extra) -> dict:
    raw = {"params": {"train.lr": LR} if params is None else params,
           "objective": OBJECTIVE if objective is None else objective, **extra}
    if search is not None:
        raw["search"] = search
    return copy.deepcopy(raw)


# ------------------------------------------------------------------------------ parse: valid
def test_parse_every_dimension_type_and_one_objective():
    spec, problems = parse(space(
        params={"train.lr": LR,
                "train.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
                "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
                "attack.eps": {"grid": [0.05, 0.1]}},
        objective={"metric": "val_worst_class_acc", "stat": "mean_minus_std", "k": 2, "mode": "max"}))
    assert problems == []
    assert spec.dims == [Dimension("train.lr", "float", low=0.001, high=0.1, log=True),
                         Dimension("train.batch_size", "int", low=32, high=128, step=32),
                         Dimension("train.optimizer", "categorical", choices=("sgd", "adam"))]
    assert spec.grid == [Dimension("attack.eps", "grid", choices=(0.05, 0.1))]
    assert spec.objective == [Target("val_worst_class_acc", "mean_minus_std", "max", 2.0)]
    assert spec.objective[0].name == "val_worst_class_acc_mean_minus_std"
    assert not spec.multi_objective
    # defaults: TPE for one objective, seed 0, 4 samples, concurrency from the cluster, no early stopping
    assert (spec.sampler, spec.seed, spec.num_samples, spec.max_concurrent, spec.early_stopping) == \
        ("tpe", 0, 4, None, None)


def test_parse_objective_list_defaults_to_nsga2():
    spec, problems = parse(space(objective=[{"metric": "val_robust_acc"},
                                            {"metric": "val_worst_class_acc", "stat": "std", "mode": "min"}]))
    assert problems == []
    assert spec.objective == [Target("val_robust_acc", "mean", "max", 1.0), Target("val_worst_class_acc", "std", "min", 1.0)]
    assert spec.multi_objective
    assert spec.sampler == "nsga2"


def test_parse_objective_list_of_one_is_single_objective():
    spec, problems = parse(space(objective=[{"metric": "val_robust_acc", "mode": "max"}]))
    assert problems == []
    assert not spec.multi_objective and spec.sampler == "tpe"


def test_parse_grid_only_uses_the_grid_sampler():
    spec, problems = parse(space(params={"attack.eps": {"grid": [0.05, 0.1, 0.2]}}, search={"num_samples": 5}))
    assert problems == []
    assert spec.dims == [] and spec.sampler == "grid"
    assert spec.total_trials() == 3            # 1 pass x 3 grid points: num_samples does not apply to a grid


def test_parse_search_options_and_early_stopping():
    spec, problems = parse(space(search={
        "sampler": "random", "seed": 7, "num_samples": 5, "max_concurrent": 3,
        "early_stopping": {"metric": "val_robust_acc", "mode": "max", "grace_period": 2, "reduction_factor": 3}}))
    assert problems == []
    assert (spec.sampler, spec.seed, spec.num_samples, spec.max_concurrent) == ("random", 7, 5, 3)
    assert spec.early_stopping == EarlyStopping("val_robust_acc", "max", 2, 3)


def test_parse_early_stopping_defaults():
    spec, problems = parse(space(search={"early_stopping": {"metric": "val_clean_acc"}}))
    assert problems == []
    assert spec.early_stopping == EarlyStopping("val_clean_acc", "max", grace_period=1, reduction_factor=2)


def test_early_stopping_refuses_a_training_curve():
    _, problems = parse(space(search={"early_stopping": {"metric": "train_loss", "mode": "min"}}))
    assert problems == [("space.search.early_stopping.metric",
                         "must be a per-epoch validation metric (val_clean_acc, val_robust_acc), got 'train_loss'")]


# ------------------------------------------------------- selection never sees the test set
@pytest.mark.parametrize("metric, use", [
    ("worst_class_acc", "val_worst_class_acc"), ("robust_acc", "val_robust_acc"), ("acc_gap", "val_acc_gap"),
    ("sym_loss", "val_sym_loss"), ("clean_acc", "val_clean_acc"), ("clean_nsd", "val_clean_nsd"),
    ("group_gap/gender", "val_group_gap/gender"), ("max_bipartition_asym", "val_max_bipartition_asym"),
    ("pgd20/worst_class_acc", "val_worst_class_acc"),        # pgd20 is the primary evaluation
])
def test_a_test_metric_objective_is_an_error_naming_the_val_metric(metric, use):
    _, problems = parse(space(objective={"metric": metric, "stat": "mean_minus_std"}))
    assert [k for k, _ in problems] == ["space.objective.metric"]
    assert problems[0][1].startswith(f"{metric!r} is a test-set metric, and selection never sees the test set")
    assert f"use {use!r}" in problems[0][1]


def test_a_secondary_evaluation_is_not_repeated_on_validation():
    _, problems = parse(space(objective=[{"metric": "val_robust_acc"}, {"metric": "fgsm/acc_gap", "mode": "min"}]))
    assert [k for k, _ in problems] == ["space.objective[1].metric"]
    assert "make 'fgsm' the first entry and use 'val_acc_gap'" in problems[0][1]


def test_a_training_quantity_is_not_an_objective():
    _, problems = parse(space(objective={"metric": "train_loss", "mode": "min"}))
    assert problems[0][0] == "space.objective.metric"
    assert problems[0][1].startswith("'train_loss' is a training quantity, not a validation metric")


@pytest.mark.parametrize("name, role", [
    ("val_robust_acc", "validation"), ("val_clean_acc", "validation"), ("val_group_gap/gender", "validation"),
    ("robust_acc", "test"), ("clean_acc", "test"), ("pgd20/worst_class_acc", "test"), ("group_gap/gender", "test"),
    ("train_loss", "training"), ("train_sym", "training"), ("lr", "training"), ("eval_time_s", "training"),
    ("val_time_s", "training"),
    ("defense_spec_norm", "training"),
])
def test_metric_role(name, role):
    assert metric_role(name) == role


@pytest.mark.parametrize("name, known", [
    ("val_robust_acc", True), ("val_worst_class_acc", True), ("val_acc_gap", True), ("val_sym_loss", True),
    ("val_clean_acc", True), ("val_clean_worst_class_acc", True), ("val_max_bipartition_asym", True),
    ("val_group_gap/gender", True), ("val_clean_group_acc/gender/F", True), ("val_stage_acc/apgd_ce", True),
    ("val_acc", False), ("val_clean_robust_acc", False), ("val_pgd20/robust_acc", False), ("val_", False),
    ("robust_acc", False), ("clean_acc", False), ("train_loss", False),
])
def test_known_val_metric(name, known):
    assert known_val_metric(name) is known


def test_grid_points_cartesian_product_in_order():
    spec, problems = parse(space(params={"train.lr": LR, "attack.eps": {"grid": [1, 2]},
                                         "train.optimizer": {"grid": ["x", "y", "z"]}},
                                 search={"num_samples": 4}))
    assert problems == []
    # the first grid dimension varies slowest
    assert spec.grid_points() == [
        {"attack.eps": 1, "train.optimizer": "x"}, {"attack.eps": 1, "train.optimizer": "y"},
        {"attack.eps": 1, "train.optimizer": "z"}, {"attack.eps": 2, "train.optimizer": "x"},
        {"attack.eps": 2, "train.optimizer": "y"}, {"attack.eps": 2, "train.optimizer": "z"}]
    assert spec.total_trials() == 24           # 4 samples x (2 x 3) grid points


def test_no_grid_is_one_empty_point():
    spec = SweepSpec(dims=[Dimension("train.lr", "float", 0.1, 1.0)], num_samples=6)
    assert spec.grid_points() == [{}]
    assert spec.total_trials() == 6            # 6 samples x 1 point


# ------------------------------------------------------------------------- parse: problems
PROBLEMS = [
    ("not a mapping", "lr: 0.1", "space", "distfair sweep needs a `space` block"),
    ("empty", {}, "space", "distfair sweep needs a `space` block"),
    ("unknown top key", space(budget=3), "space.budget", "unknown key; known: params, objective, search"),
    ("params missing", {"objective": OBJECTIVE}, "space.params", "must map dotted config keys to dimensions"),
    ("key not in config", space(params={"train.lrate": LR}), "space.params.train.lrate",
     "does not address a config value"),
    ("dimension not a mapping", space(params={"train.lr": 0.1}), "space.params.train.lr",
     "must be a mapping like {type: float, low: 0.1, high: 1}, got 0.1"),
    ("unknown type", space(params={"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}),
     "space.params.train.lr.type", "must be one of float, int, categorical (or use grid: [...]), got 'uniform'"),
    ("unknown dimension key", space(params={"train.lr": {**LR, "q": 2}}), "space.params.train.lr.q",
     "unknown key for a float dimension; known: high, log, low, step, type"),
    ("low > high", space(params={"train.lr": {"type": "float", "low": 5, "high": 1}}), "space.params.train.lr.low",
     "must be <= high, got 5 > 1"),
    ("low missing", space(params={"train.lr": {"type": "float", "high": 1}}), "space.params.train.lr.low",
     "must be a number, got None"),
    ("log with low 0", space(params={"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
     "space.params.train.lr.low", "must be > 0 with log: true, got 0"),
    ("log not a bool", space(params={"train.lr": {"type": "float", "low": 0.1, "high": 1, "log": "yes"}}),
     "space.params.train.lr.log", "must be true or false, got 'yes'"),
    ("step with log", space(params={"train.lr": {**LR, "step": 0.01}}), "space.params.train.lr.step",
     "cannot be combined with log: true"),
    ("step 0", space(params={"train.lr": {"type": "float", "low": 0.1, "high": 1, "step": 0}}),
     "space.params.train.lr.step", "must be > 0, got 0"),
    ("step < 0", space(params={"train.batch_size": {"type": "int", "low": 16, "high": 64, "step": -16}}),
     "space.params.train.batch_size.step", "must be > 0, got -16"),
    ("int with float bounds", space(params={"train.batch_size": {"type": "int", "low": 16.5, "high": 64}}),
     "space.params.train.batch_size.low", "must be an integer, got 16.5"),
    ("empty choices", space(params={"train.optimizer": {"type": "categorical", "choices": []}}),
     "space.params.train.optimizer.choices", "must be a non-empty list, got []"),
    ("empty grid", space(params={"train.lr": LR, "attack.eps": {"grid": []}}), "space.params.attack.eps.grid",
     "must be a non-empty list, got []"),
    ("grid with extra keys", space(params={"train.lr": LR, "attack.eps": {"grid": [0.1], "type": "float"}}),
     "space.params.attack.eps", "a grid dimension takes only 'grid', got also ['type']"),
    ("unknown metric", space(objective={"metric": "accuracy"}), "space.objective.metric",
     "unknown metric 'accuracy'; objectives name validation metrics"),
    ("unknown stat", space(objective={"metric": "val_robust_acc", "stat": "avg"}), "space.objective.stat",
     "unknown stat 'avg'; known: mean, std, min, max, median, mean_minus_std, mean_plus_std, ci95_low, ci95_high"),
    ("bad mode", space(objective={"metric": "val_robust_acc", "mode": "maximize"}), "space.objective.mode",
     "must be max or min, got 'maximize'"),
    ("negative k", space(objective={"metric": "val_robust_acc", "stat": "mean_minus_std", "k": -1}), "space.objective.k",
     "must be a number >= 0, got -1"),
    ("infinite k", space(objective={"metric": "val_robust_acc", "stat": "mean_minus_std", "k": math.inf}),
     "space.objective.k", "must be a number >= 0, got inf"),
    ("unknown objective key", space(objective={"metric": "val_robust_acc", "direction": "max"}),
     "space.objective.direction", "unknown key; known: metric, stat, mode, k"),
    ("objective in a list", space(objective=[{"metric": "val_robust_acc"}, {"metric": "val_acc_gap", "mode": "down"}]),
     "space.objective[1].mode", "must be max or min, got 'down'"),
    ("objective missing", {"params": {"train.lr": LR}}, "space.objective",
     "required: {metric, stat, mode} or a list of them"),
    ("unknown search key", space(search={"trials": 3}), "space.search.trials",
     "unknown key; known: sampler, seed, num_samples, max_concurrent, early_stopping"),
    ("unknown sampler", space(search={"sampler": "cmaes"}), "space.search.sampler",
     "must be one of tpe, nsga2, random, grid, got 'cmaes'"),
    ("grid sampler with sampled dims", space(search={"sampler": "grid"}), "space.search.sampler",
     "grid searches only grid dimensions; train.lr are sampled"),
    ("num_samples 0", space(search={"num_samples": 0}), "space.search.num_samples", "must be an integer >= 1, got 0"),
    ("seed -1", space(search={"seed": -1}), "space.search.seed", "must be an integer >= 0, got -1"),
    ("seed bool", space(search={"seed": True}), "space.search.seed", "must be an integer >= 0, got True"),
    ("max_concurrent 0", space(search={"max_concurrent": 0}), "space.search.max_concurrent",
     "must be an integer >= 1, got 0"),
    ("early stopping on a test metric", space(search={"early_stopping": {"metric": "robust_acc"}}),
     "space.search.early_stopping.metric",
     "must be a per-epoch validation metric (val_clean_acc, val_robust_acc), got 'robust_acc'"),
    ("early stopping mode", space(search={"early_stopping": {"metric": "val_robust_acc", "mode": "up"}}),
     "space.search.early_stopping.mode", "must be max or min, got 'up'"),
    ("grace_period 0", space(search={"early_stopping": {"metric": "val_robust_acc", "grace_period": 0}}),
     "space.search.early_stopping.grace_period", "must be an integer >= 1, got 0"),
    ("grace_period bool", space(search={"early_stopping": {"metric": "val_robust_acc", "grace_period": True}}),
     "space.search.early_stopping.grace_period", "must be an integer >= 1, got True"),
    ("reduction_factor 1", space(search={"early_stopping": {"metric": "val_robust_acc", "reduction_factor": 1}}),
     "space.search.early_stopping.reduction_factor", "must be an integer >= 2, got 1"),
    ("unknown early stopping key", space(search={"early_stopping": {"metric": "val_robust_acc", "patience": 3}}),
     "space.search.early_stopping.patience", "unknown key; known: metric, mode, grace_period, reduction_factor"),
]


@pytest.mark.parametrize("raw, key, reason", [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS])
def test_parse_problem_names_the_dotted_key(raw, key, reason):
    _, problems = parse(raw)
    assert [k for k, _ in problems] == [key], problems
    assert problems[0][1].startswith(reason), problems


def test_parse_reports_every_problem_at_once():
    raw = space(params={"train.lr": {"type": "float", "low": 5, "high": 1}, "nope.key": LR,
                        "train.optimizer": {"type": "categorical", "choices": []}},
                objective={"metric": "val_robust_acc", "stat": "avg"},
                search={"num_samples": 0, "early_stopping": {"metric": "val_robust_acc", "reduction_factor": 1}},
                extra=1)
    _, problems = parse(raw)
    assert [k for k, _ in problems] == [
        "space.extra", "space.params.train.lr.low", "space.params.nope.key", "space.params.train.optimizer.choices",
        "space.objective.stat", "space.search.num_samples", "space.search.early_stopping.reduction_factor"]


# ----------------------------------------------------------------------------- known_metric
@pytest.mark.parametrize("name, known", [
    ("robust_acc", True), ("worst_class_acc", True), ("acc_gap", True), ("nsd", True), ("worst10_acc", True),
    ("max_asym_gap", True), ("sym_loss", True), ("tgt_std", True),
    ("acc", False),                            # the primary attack's acc is reported as robust_acc
    ("clean_acc", True), ("clean_worst_class_acc", True), ("clean_robust_acc", False),
    ("val_robust_acc", True), ("val_clean_acc", True), ("train_loss", True), ("train_time_s", True),
    ("eval_time_s", True),
    ("pgd20/robust_acc", True), ("fgsm/worst_class_acc", True),
    ("pgd20/acc", False), ("pgd20/clean_acc", False), ("pgd20/", False),
    ("pgd50/robust_acc", False),               # not a declared evaluation attack
    ("lr", True), ("", False),
    ("max_bipartition_asym", True), ("clean_max_bipartition_asym", True), ("fgsm/target_success_rate", True),
    ("group_gap/gender", True), ("clean_group_acc/gender/F", True), ("pgd20/max_group_asym/gender", True),
    ("pgd20/stage_acc/apgd_ce", True), ("group_gap/", False), ("pgd50/group_gap/gender", False),
])
def test_known_metric(name, known):
    assert known_metric(name, ["pgd20", "fgsm"]) is known


# ------------------------------------------------------------------------------ Target.value
# summarize([0.5, 0.7, 0.9]) by hand: mean 2.1 / 3 = 0.7; std = sqrt((0.2² + 0 + 0.2²) / 2) = 0.2;
# ci95 = 0.7 ∓ t(0.975, 2) · 0.2 / √3 = 0.7 ∓ 4.302653 · 0.115470 = 0.7 ∓ 0.496828
THREE = {"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9, "ci95_low": 0.203172, "ci95_high": 1.196828,
         "n": 3, "values": [0.5, 0.7, 0.9]}
# four seeds (even n), stored in seed order: sorted 0.1, 0.2, 0.3, 0.4; mean 1.0 / 4 = 0.25;
# std = sqrt((0.15² + 0.05² + 0.05² + 0.15²) / 3) = sqrt(0.05 / 3) = 0.129099
FOUR = {"mean": 0.25, "std": 0.129099, "min": 0.1, "max": 0.4, "ci95_low": 0.044574, "ci95_high": 0.455426,
        "n": 4, "values": [0.4, 0.1, 0.3, 0.2]}
ONE = {"mean": 0.6, "std": None, "min": 0.6, "max": 0.6, "ci95_low": None, "ci95_high": None, "n": 1,
       "values": [0.6]}
NONE = {"mean": None, "std": None, "min": None, "max": None, "ci95_low": None, "ci95_high": None, "n": 0,
        "values": []}


def test_hand_summaries_have_summarize_shape():
    for hand, values in ((THREE, [0.5, 0.7, 0.9]), (FOUR, [0.4, 0.1, 0.3, 0.2]), (ONE, [0.6]), (NONE, [])):
        computed = summarize(values)
        assert computed.keys() == hand.keys()
        for key, value in hand.items():
            assert computed[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value)


@pytest.mark.parametrize("stat, k, expected", [
    ("mean", 1.0, 0.7), ("std", 1.0, 0.2), ("min", 1.0, 0.5), ("max", 1.0, 0.9),
    ("median", 1.0, 0.7),                      # odd n: the middle of 0.5, 0.7, 0.9
    ("mean_minus_std", 1.0, 0.5),              # 0.7 - 1 * 0.2
    ("mean_minus_std", 2.0, 0.3),              # 0.7 - 2 * 0.2
    ("mean_plus_std", 1.0, 0.9),               # 0.7 + 1 * 0.2
    ("mean_plus_std", 0.5, 0.8),               # 0.7 + 0.5 * 0.2
    ("ci95_low", 1.0, 0.203172), ("ci95_high", 1.0, 1.196828),
])
def test_target_value_three_seeds(stat, k, expected):
    assert Target("worst_class_acc", stat, "max", k).value({"worst_class_acc": THREE}) == pytest.approx(expected)


def test_every_stat_is_covered():
    covered = {"mean", "std", "min", "max", "median", "mean_minus_std", "mean_plus_std", "ci95_low", "ci95_high"}
    assert set(STATS) == covered


def test_target_value_median_even_n():
    # sorted 0.1, 0.2, 0.3, 0.4: (0.2 + 0.3) / 2
    assert Target("robust_acc", "median").value({"robust_acc": FOUR}) == pytest.approx(0.25)


@pytest.mark.parametrize("stat, expected", [
    ("mean", 0.6), ("min", 0.6), ("max", 0.6), ("median", 0.6),
    ("std", None), ("mean_minus_std", None), ("mean_plus_std", None), ("ci95_low", None), ("ci95_high", None),
])
def test_target_value_one_seed(stat, expected):
    assert Target("robust_acc", stat).value({"robust_acc": ONE}) == expected


@pytest.mark.parametrize("stat", STATS)
def test_target_value_missing_metric_or_no_seed(stat):
    target = Target("robust_acc", stat)
    assert target.value({"worst_class_acc": THREE}) is None
    assert target.value({"robust_acc": NONE}) is None
    assert target.value({}) is None


# ------------------------------------------------------------------------------ pareto_front
def test_pareto_front_2d_max_min_with_duplicates():
    points = [[0.9, 0.3],     # 0: best robust acc; its duplicate (3) does not dominate it
              [0.8, 0.1],     # 1: non-dominated
              [0.7, 0.2],     # 2: dominated by 1 (0.8 >= 0.7, 0.1 <= 0.2)
              [0.9, 0.3],     # 3: equal to 0: both stay
              [0.6, 0.05],    # 4: lowest std: non-dominated
              [0.6, 0.3]]     # 5: dominated by 0, 1, 2, 3
    assert pareto_front(points, ["max", "min"]) == [0, 1, 3, 4]


def test_pareto_front_2d_min_max():
    points = [[1, 1], [2, 3], [0, 0], [1, 2]]
    # min first, max second: [1, 2] dominates [1, 1]; [2, 3] has the highest second; [0, 0] the lowest first
    assert pareto_front(points, ["min", "max"]) == [1, 2, 3]


def test_pareto_front_3d_mixed_modes():
    points = [[1, 1, 1],      # 0: non-dominated
              [1, 1, 2],      # 1: dominated by 0 (worse third, min)
              [2, 0, 5],      # 2: highest first
              [0, 2, 0],      # 3: highest second, lowest third
              [0.5, 0.5, 1]]  # 4: dominated by 0
    assert pareto_front(points, ["max", "max", "min"]) == [0, 2, 3]


def test_pareto_front_edge_cases():
    assert pareto_front([[0.3, 0.4]], ["max", "min"]) == [0]
    assert pareto_front([[5, 5], [1, 1], [2, 3], [4, 4]], ["max", "max"]) == [0]
    assert pareto_front([[2, 2], [2, 2]], ["max", "max"]) == [0, 1]
    assert pareto_front([], ["max", "max"]) == []


# ------------------------------------------------------------------------------- load_sweep
TINY_SWEEP = {
    "description": "tiny sweep",
    "defense": {"name": "syfar", "lambda_sym": 0.5},
    "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 6},
    "model": {"name": "mlp", "hidden": 16},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
    "eval": {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5}]},
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "seeds": [0, 1],
    "space": {
        "params": {"defense.lambda_sym": {"type": "float", "low": 0.1, "high": 2.0, "log": True},
                   "train.lr": {"type": "float", "low": 0.01, "high": 0.1},
                   "attack.eps": {"grid": [0.05, 0.1]}},
        "objective": {"metric": "val_worst_class_acc", "stat": "mean_minus_std", "k": 1.0, "mode": "max"},
        "search": {"seed": 3, "num_samples": 2},
    },
}


@pytest.fixture
def sweep_dict() -> dict:
    return copy.deepcopy(TINY_SWEEP)


def test_load_sweep_good_file(write_config, sweep_dict):
    cfg, spec = load_sweep(str(write_config(sweep_dict)))
    assert cfg["seeds"] == [0, 1] and cfg["defense"]["name"] == "syfar"
    assert [d.key for d in spec.dims] == ["defense.lambda_sym", "train.lr"]
    assert spec.grid_points() == [{"attack.eps": 0.05}, {"attack.eps": 0.1}]
    assert spec.objective == [Target("val_worst_class_acc", "mean_minus_std", "max", 1.0)]
    assert (spec.sampler, spec.seed, spec.num_samples, spec.max_concurrent) == ("tpe", 3, 2, None)
    assert spec.total_trials() == 4            # 2 samples x 2 grid points


def test_load_sweep_overrides(write_config, sweep_dict):
    cfg, spec = load_sweep(str(write_config(sweep_dict)), num_samples=7, num_seeds=3, max_concurrent=2)
    assert cfg["seeds"] == [0, 1, 2]
    assert (spec.num_samples, spec.max_concurrent) == (7, 2)
    assert spec.total_trials() == 14           # 7 samples x 2 grid points


@pytest.mark.parametrize("key, dim, value, reason", [
    ("train.lr", {"type": "float", "low": -1, "high": 0.1}, "-1", "train.lr: must be > 0"),
    ("attack.eps", {"type": "float", "low": -0.1, "high": 0.2}, "-0.1", "attack: eps must be >= 0"),
    ("defense.name", {"type": "categorical", "choices": ["syfar", "nope"]}, "'nope'", "unknown defense 'nope'"),
    ("train.batch_size", {"grid": [16, 0]}, "0", "train.batch_size: must be >= 1"),
])
def test_load_sweep_rejects_invalid_extremes(write_config, sweep_dict, key, dim, value, reason):
    sweep_dict["space"]["params"] = {"defense.lambda_sym": {"type": "float", "low": 0.1, "high": 2.0}, key: dim}
    path = str(write_config(sweep_dict))
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    assert [k for k, _ in caught.value.problems] == [f"space.params.{key}"]
    assert f"value {value} is not valid" in caught.value.problems[0][1]
    assert reason in caught.value.problems[0][1]
    assert f"{path}: space.params.{key}: value {value} is not valid" in str(caught.value)


def test_load_sweep_reports_space_problems(write_config, sweep_dict):
    sweep_dict["space"]["params"]["train.lr"] = {"type": "float", "low": 5, "high": 1}
    sweep_dict["space"]["objective"]["metric"] = "val_fgsm/robust_acc"  # not a metric a configuration reports
    with pytest.raises(ConfigError) as caught:
        load_sweep(str(write_config(sweep_dict)))
    assert [k for k, _ in caught.value.problems][:2] == ["space.params.train.lr.low", "space.objective.metric"]


def test_load_sweep_val_robust_early_stopping_needs_a_training_attack(write_config, sweep_dict):
    sweep_dict["defense"] = {"name": "standard"}
    sweep_dict["attack"] = None
    sweep_dict["eval"] = {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5, "eps": 0.1}]}
    sweep_dict["space"]["params"] = {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    sweep_dict["space"]["search"]["early_stopping"] = {"metric": "val_robust_acc"}
    with pytest.raises(ConfigError) as caught:
        load_sweep(str(write_config(sweep_dict)))
    assert caught.value.problems == [("space.search.early_stopping.metric", "val_robust_acc needs a training attack")]
    # the same file judged on the clean validation curve is fine
    sweep_dict["space"]["search"]["early_stopping"] = {"metric": "val_clean_acc"}
    _, spec = load_sweep(str(write_config(sweep_dict)))
    assert spec.early_stopping == EarlyStopping("val_clean_acc", "max", 1, 2)


@pytest.mark.parametrize("name, n_dims, sampler, n_targets", [
    ("quickstart_sweep", 2, "tpe", 1),
    ("digits_syfar", 5, "tpe", 1),
    ("mnist1d_syfar", 2, "nsga2", 3),
    ("digits_trades", 2, "tpe", 1),
    ("digits_faal", 2, "tpe", 1),
    ("digits_specnorm", 2, "tpe", 1),
])
def test_shipped_sweep_files_load(name, n_dims, sampler, n_targets):
    cfg, spec = load_sweep(str(REPO / "tune_spaces" / f"{name}.yaml"))
    assert (len(spec.dims), spec.sampler, len(spec.objective)) == (n_dims, sampler, n_targets)
    assert cfg["seeds"]


def test_cifar10_sweep_space_validates(tmp_path, monkeypatch):
    from test_data import write_cifar10

    write_cifar10(tmp_path, monkeypatch)
    cfg = load_config(REPO / "tune_spaces" / "cifar10_syfar.yaml", [f"dataset.root={tmp_path}"])
    spec, problems = parse_space(cfg["space"], config_keys=set(flatten(cfg)),
                                 eval_names=[a["name"] for a in cfg["eval"]["attacks"]])
    assert problems == []
    assert spec.dims == [Dimension("defense.lambda_sym", "float", low=0.1, high=10.0, log=True)]
    assert spec.objective == [Target("val_worst_class_acc", "mean_minus_std", "max", 1.0)]
    assert (spec.sampler, spec.seed, spec.num_samples, spec.max_concurrent) == ("tpe", 0, 8, 4)
    assert cfg["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("name, defense", [("cifar10_trades", "trades"), ("cifar10_faal", "faal"),
                                           ("cifar10_specnorm", "specnorm")])
def test_cifar10_baseline_files_validate(tmp_path, name, defense, monkeypatch):
    from test_data import write_cifar10

    write_cifar10(tmp_path, monkeypatch)
    cfg = load_config(REPO / "tune_spaces" / f"{name}.yaml", [f"dataset.root={tmp_path}"])
    spec, problems = parse_space(cfg["space"], config_keys=set(flatten(cfg)),
                                 eval_names=[a["name"] for a in cfg["eval"]["attacks"]])
    assert problems == [] and cfg["defense"]["name"] == defense and cfg["scaling"]["use_gpu"] is True


# ----------------------------------------------------------------------------------- choose
def outcome(trial_id: str, objective: list, status: str = "FINISHED") -> TrialOutcome:
    return TrialOutcome(trial_id=trial_id, params={"train.lr": 0.01}, parent_run_id=f"run-{trial_id}",
                        status=status, metrics={}, objective=objective)


def test_choose_single_objective_max_and_min():
    trials = [outcome("a", [0.5]), outcome("b", [0.7]), outcome("c", [0.6]),
              outcome("d", [0.9], status="FAILED"), outcome("e", [None]), outcome("f", [0.1], status="KILLED")]
    best, pareto = choose(trials, [Target("worst_class_acc", "mean", "max")])
    assert best.trial_id == "b" and pareto == [best]
    best, pareto = choose(trials, [Target("acc_gap", "mean", "min")])
    assert best.trial_id == "a" and pareto == [best]


def test_choose_nothing_scored():
    trials = [outcome("a", [None]), outcome("b", [0.4], status="RUNNING")]
    assert choose(trials, [Target("robust_acc")]) == (None, [])
    assert choose([], [Target("robust_acc")]) == (None, [])


def test_choose_multi_objective_pareto_set():
    targets = [Target("robust_acc", "mean", "max"), Target("worst_class_acc", "std", "min")]
    trials = [outcome("a", [0.8, 0.10]),
              outcome("b", [0.7, 0.02]),
              outcome("c", [0.6, 0.05]),                     # dominated by b
              outcome("d", [0.75, 0.12]),                    # dominated by a
              outcome("e", [0.95, 0.0], status="FAILED"),    # would dominate all, but failed
              outcome("f", [0.99, None]),                    # objective undefined
              outcome("g", [0.9, 0.01], status="RUNNING"),
              outcome("h", [0.7, 0.02])]                     # equal to b: both non-dominated
    best, pareto = choose(trials, targets)
    assert [t.trial_id for t in pareto] == ["a", "b", "h"]
    assert best.trial_id == "a"                              # highest robust_acc of the Pareto set


def test_choose_multi_objective_best_under_a_min_first_target():
    targets = [Target("acc_gap", "mean", "min"), Target("robust_acc", "mean", "max")]
    trials = [outcome("a", [0.3, 0.9]), outcome("b", [0.1, 0.5]), outcome("c", [0.2, 0.4]),
              outcome("d", [0.05, 0.2], status="FAILED")]
    best, pareto = choose(trials, targets)
    assert [t.trial_id for t in pareto] == ["a", "b"]       # c is dominated by b (0.1 <= 0.2, 0.5 >= 0.4)
    assert best.trial_id == "b"                              # lowest acc_gap of the Pareto set


# ---------------------------------------------------------------- sweep identity and directory
def identity_inputs(high: float = 0.1, description: str = "a sweep"):
    raw = space(params={"train.lr": {"type": "float", "low": 0.001, "high": high}})
    cfg = {"description": description, "train": {"lr": 0.05}, "seeds": [0, 1], "space": raw}
    spec, problems = parse(raw)
    assert problems == []
    return cfg, spec


def test_sweep_identity_stable_and_sensitive():
    name = sweep_identity(*identity_inputs(), "tune_spaces/my_sweep.yaml")
    stem, _, digest = name.rpartition("-")
    assert stem == "my_sweep" and len(digest) == 8 and int(digest, 16) >= 0
    assert sweep_identity(*identity_inputs(), "elsewhere/my_sweep.yaml") == name
    assert sweep_identity(*identity_inputs(description="reworded"), "tune_spaces/my_sweep.yaml") == name
    assert sweep_identity(*identity_inputs(high=0.2), "tune_spaces/my_sweep.yaml") != name
    cfg, spec = identity_inputs()
    spec.num_samples, spec.max_concurrent = 9, 3      # budget and concurrency: --resume still finds it
    assert sweep_identity(cfg, spec, "tune_spaces/my_sweep.yaml") == name
    spec.seed = 7                                     # a different sampler seed is a different sweep
    assert sweep_identity(cfg, spec, "tune_spaces/my_sweep.yaml") != name


def test_sweep_dir_name(tmp_path):
    assert sweep_dir_name("s-abc", str(tmp_path / "absent"), resume=False) == "s-abc-1"
    assert sweep_dir_name("s-abc", str(tmp_path), resume=False) == "s-abc-1"
    with pytest.raises(FileNotFoundError, match="s-abc"):
        sweep_dir_name("s-abc", str(tmp_path), resume=True)
    (tmp_path / "s-abc-1").mkdir()
    assert sweep_dir_name("s-abc", str(tmp_path), resume=False) == "s-abc-2"
    assert sweep_dir_name("s-abc", str(tmp_path), resume=True) == "s-abc-1"
    for other in ("s-abc-2", "s-abc-10", "s-abc-x", "s-abc-11-old", "t-abc-50", "s-abcd-40"):
        (tmp_path / other).mkdir()
    # attempts are compared as numbers (10 > 2), other names are ignored
    assert sweep_dir_name("s-abc", str(tmp_path), resume=True) == "s-abc-10"
    assert sweep_dir_name("s-abc", str(tmp_path), resume=False) == "s-abc-11"


# ------------------------------------------------------------------- groups and concurrency
@pytest.mark.parametrize("n_seeds, capacity, requested, expected", [
    (2, 2, None, (2, 1)),      # both seeds at once, one configuration
    (3, 2, None, (2, 1)),      # 3 seeds on 2 groups
    (2, 4, None, (2, 2)),      # 4 // 2 = 2 configurations of 2 groups
    (2, 2, 2, (1, 2)),         # 2 configurations requested: 2 // 2 = 1 group each
    (2, 2, 5, (1, 2)),         # request capped at capacity 2
    (5, 16, None, (5, 3)),     # 16 // 5 = 3 configurations of 5 groups (15 <= 16)
    (1, 8, None, (1, 8)),
    (4, 8, 3, (2, 3)),         # 8 // 3 = 2 groups each (6 <= 8)
    (4, 1, None, (1, 1)),
])
def test_groups_and_concurrency(n_seeds, capacity, requested, expected):
    assert groups_and_concurrency(n_seeds, capacity, requested) == expected


def test_groups_and_concurrency_always_fit():
    for n_seeds, capacity, requested in itertools.product(range(1, 9), range(1, 21), [None, *range(1, 25)]):
        groups, concurrent = groups_and_concurrency(n_seeds, capacity, requested)
        case = (n_seeds, capacity, requested, groups, concurrent)
        assert 1 <= groups <= n_seeds and concurrent >= 1, case
        assert groups * concurrent <= capacity, case
        if requested is None:
            assert groups == min(n_seeds, capacity), case     # a lone configuration uses every group it can
        else:
            assert concurrent == min(requested, capacity), case


def test_trial_values_apply_before_defaults_are_resolved(tmp_path):
    """A searched training ε is inherited by an evaluation attack that does not fix its own."""
    from distfair.distributed.sweep import _trial_config
    from distfair.experiment.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "defense": {"name": "syfar"}, "dataset": {"name": "synthetic"}, "model": {"name": "mlp"},
        "attack": {"name": "pgd", "eps": 0.1}, "seeds": [0, 1],
        "eval": {"attacks": [{"name": "inherits", "attack": "pgd"}, {"name": "fixed", "attack": "pgd", "eps": 0.05}]},
        "space": {"params": {"attack.eps": {"type": "float", "low": 0.1, "high": 0.3}},
                  "objective": {"metric": "val_robust_acc"}}}))
    cfg, spec = load_sweep(str(path), num_seeds=3)
    context = {"base": spec.base, "config_path": str(path), "groups_per_trial": 1}
    trial = _trial_config(context, {"attack.eps": 0.25})
    assert trial["attack"]["eps"] == 0.25
    assert [a["eps"] for a in trial["eval"]["attacks"]] == [0.25, 0.05]
    assert trial["seeds"] == [0, 1, 2] and trial["scaling"]["max_concurrent_seeds"] == 1
