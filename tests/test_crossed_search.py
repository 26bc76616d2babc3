"""CrossedSearch, the Tune searcher of ``distfair sweep``: Optuna's sampled points crossed with
the grid, and only final seed-aggregated values told to Optuna. No Ray cluster: the searcher
is driven by hand the way Tune drives it (suggest, on_trial_result, on_trial_complete)."""
from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from distfair.distributed.sweep import CrossedSearch, build_searcher
from distfair.config.space import parse_space

KEYS = {"train.lr", "train.batch_size", "train.optimizer", "defense.lambda_sym", "attack.eps", "attack.steps"}
LR = {"type": "float", "low": 0.001, "high": 0.1, "log": True}
BATCH = {"type": "int", "low": 16, "high": 128, "step": 16}
LAMBDA = {"type": "float", "low": 0.1, "high": 2.0}
WORST = "val_worst_class_acc_mean"
TWO_TARGETS = [{"metric": "val_robust_acc", "stat": "mean", "mode": "max"},
               {"metric": "val_worst_class_acc", "stat": "std", "mode": "min"}]


def make_spec(params: dict, objective=None, **search):
    raw = {"params": params, "objective": objective or {"metric": "val_worst_class_acc"}, "search": search}
    spec, problems = parse_space(raw, config_keys=KEYS, eval_names=[])
    assert problems == []
    return spec


def study_trials(searcher: CrossedSearch):
    return searcher._inner._ot_study.trials


def score(params: dict) -> dict:
    """A deterministic objective of the suggested point (two values for the multi-objective tests)."""
    lr = -abs(math.log10(params["train.lr"]) + 2)                      # best at lr = 0.01
    return {WORST: lr + params.get("train.batch_size", 0) / 1000 + params.get("defense.lambda_sym", 0) / 10,
            "val_robust_acc_mean": lr, "val_worst_class_acc_std": params.get("defense.lambda_sym", 0)}


def drive(searcher: CrossedSearch, n: int, first_id: int = 0) -> list:
    """Suggest n trials one after the other, each finishing with its final score."""
    suggestions = []
    for i in range(first_id, first_id + n):
        params = searcher.suggest(f"trial{i}")
        suggestions.append(params)
        if params == Searcher.FINISHED:
            break
        searcher.on_trial_result(f"trial{i}", {"seeds_done": 1, "seeds_total": 2, "final": 0})
        searcher.on_trial_complete(f"trial{i}", {"final": 1, "seeds_done": 2, **score(params)})
    return suggestions


# ----------------------------------------------------------------------------- suggestions
def test_sampled_points_crossed_with_the_grid():
    spec = make_spec({"train.lr": LR, "train.batch_size": BATCH, "attack.eps": {"grid": [0.05, 0.1]}}, num_samples=3)
    searcher = build_searcher(spec)
    suggestions = [searcher.suggest(f"t{i}") for i in range(6)]
    sampled = []
    for first, second in zip(suggestions[::2], suggestions[1::2]):
        assert (first["attack.eps"], second["attack.eps"]) == (0.05, 0.1)
        point = {k: v for k, v in first.items() if k != "attack.eps"}
        assert point == {k: v for k, v in second.items() if k != "attack.eps"}
        assert set(point) == {"train.lr", "train.batch_size"}
        assert 0.001 <= point["train.lr"] <= 0.1 and point["train.batch_size"] in (16, 32, 48, 64, 80, 96, 112, 128)
        sampled.append(point)
    assert len({tuple(sorted(p.items())) for p in sampled}) == 3         # three distinct sampled points
    assert searcher.suggest("t6") == Searcher.FINISHED
    assert searcher.suggest("t7") == Searcher.FINISHED
    assert len(study_trials(searcher)) == 3                              # Optuna saw one trial per point


def test_grid_only_search_gives_exactly_the_grid():
    spec = make_spec({"attack.eps": {"grid": [0.05, 0.1]}, "attack.steps": {"grid": [1, 3]}}, num_samples=5)
    assert spec.sampler == "grid"
    searcher = build_searcher(spec)
    assert searcher._inner is None
    suggestions = [searcher.suggest(f"t{i}") for i in range(4)]
    assert suggestions == [{"attack.eps": 0.05, "attack.steps": 1}, {"attack.eps": 0.05, "attack.steps": 3},
                           {"attack.eps": 0.1, "attack.steps": 1}, {"attack.eps": 0.1, "attack.steps": 3}]
    assert searcher.suggest("t4") == Searcher.FINISHED
    for i in range(4):                                                   # nothing to tell: no error either
        searcher.on_trial_complete(f"t{i}", {"final": 1, WORST: 0.5})
    assert searcher.suggest("t5") == Searcher.FINISHED


# ------------------------------------------------------------------ what reaches Optuna
@pytest.fixture
def crossed() -> CrossedSearch:
    spec = make_spec({"train.lr": LR, "attack.eps": {"grid": [0.05, 0.1]}}, num_samples=3)
    searcher = build_searcher(spec)
    for i in range(6):
        searcher.suggest(f"t{i}")                                        # t0, t1: point 0; t2, t3: point 1; ...
    return searcher


def test_progress_results_never_reach_optuna(crossed):
    for i in range(6):
        for seeds_done in (0, 1):
            crossed.on_trial_result(f"t{i}", {"seeds_done": seeds_done, "seeds_total": 2, "final": 0,
                                              f"so_far.{WORST}": 0.9, "epoch": 3, "val_robust_acc.seed_mean": 0.4})
    assert [t.state for t in study_trials(crossed)] == [TrialState.RUNNING] * 3
    assert all(t.values is None and t.intermediate_values == {} for t in study_trials(crossed))


def test_optuna_is_told_the_mean_over_grid_points(crossed):
    crossed.on_trial_complete("t0", {"final": 1, WORST: 0.2})
    assert study_trials(crossed)[0].state == TrialState.RUNNING         # waits for the other grid point
    crossed.on_trial_complete("t1", {"final": 1, WORST: 0.4})
    trial = study_trials(crossed)[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [pytest.approx(0.3)]                          # (0.2 + 0.4) / 2
    assert [t.state for t in study_trials(crossed)[1:]] == [TrialState.RUNNING] * 2


def test_grid_points_may_complete_in_any_order(crossed):
    crossed.on_trial_complete("t3", {"final": 1, WORST: 0.9})
    crossed.on_trial_complete("t0", {"final": 1, WORST: 0.1})
    crossed.on_trial_complete("t2", {"final": 1, WORST: 0.5})
    assert [t.state for t in study_trials(crossed)] == [TrialState.RUNNING, TrialState.COMPLETE,
                                                        TrialState.RUNNING]
    assert study_trials(crossed)[1].values == [pytest.approx(0.7)]      # (0.5 + 0.9) / 2


def test_early_stopped_point_is_pruned(crossed):
    last = {"final": 0, "seeds_done": 1, f"so_far.{WORST}": 0.8, "epoch": 2, "val_robust_acc.seed_mean": 0.3}
    crossed.on_trial_complete("t2", last)
    crossed.on_trial_complete("t3", {**last, WORST: 0.8})                # a value without final=1 is not final
    trial = study_trials(crossed)[1]
    assert trial.state == TrialState.PRUNED and trial.values is None


def test_failed_point_is_failed(crossed):
    crossed.on_trial_complete("t4", None, error=True)
    crossed.on_trial_complete("t5", None, error=True)
    trial = study_trials(crossed)[2]
    assert trial.state == TrialState.FAIL and trial.values is None


def test_unknown_trial_is_ignored(crossed):
    crossed.on_trial_complete("not-suggested", {"final": 1, WORST: 1.0})
    assert [t.state for t in study_trials(crossed)] == [TrialState.RUNNING] * 3


def test_multi_objective_mean_over_grid_points():
    spec = make_spec({"train.lr": LR, "attack.eps": {"grid": [0.05, 0.1]}}, objective=TWO_TARGETS, num_samples=1)
    searcher = build_searcher(spec)
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", {"final": 1, "val_robust_acc_mean": 0.6, "val_worst_class_acc_std": 0.02})
    searcher.on_trial_complete("t1", {"final": 1, "val_robust_acc_mean": 0.8, "val_worst_class_acc_std": 0.04})
    trial = study_trials(searcher)[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [pytest.approx(0.7), pytest.approx(0.03)]     # (0.6 + 0.8) / 2, (0.02 + 0.04) / 2


# ---------------------------------------------------------------------------- determinism
def test_tpe_same_seed_same_suggestions_past_startup():
    params = {"train.lr": LR, "train.batch_size": BATCH, "defense.lambda_sym": LAMBDA}
    first = drive(build_searcher(make_spec(params, seed=0, num_samples=12)), 12)
    searcher = build_searcher(make_spec(params, seed=0, num_samples=12))
    second = drive(searcher, 12)
    assert first == second
    # 12 completed trials: the last two come from TPE's model, past its 10 random startup trials
    assert [t.state for t in study_trials(searcher)] == [TrialState.COMPLETE] * 12
    other = drive(build_searcher(make_spec(params, seed=1, num_samples=12)), 12)
    assert other != first and other[0] != first[0]


def test_nsga2_same_seed_same_suggestions():
    params = {"train.lr": LR, "defense.lambda_sym": LAMBDA}
    spec = make_spec(params, objective=TWO_TARGETS, seed=0, num_samples=12)
    assert spec.sampler == "nsga2"
    first = drive(build_searcher(spec), 12)
    searcher = build_searcher(make_spec(params, objective=TWO_TARGETS, seed=0, num_samples=12))
    assert drive(searcher, 12) == first
    assert all(len(t.values) == 2 for t in study_trials(searcher))
    other = drive(build_searcher(make_spec(params, objective=TWO_TARGETS, seed=5, num_samples=12)), 12)
    assert other != first


def test_sampling_stops_after_num_samples():
    suggestions = drive(build_searcher(make_spec({"train.lr": LR}, num_samples=4)), 10)
    assert len(suggestions) == 5 and suggestions[-1] == Searcher.FINISHED


# ----------------------------------------------------------------------------- save/restore
def test_save_restore_continues_with_the_same_suggestions(tmp_path):
    params = {"train.lr": LR, "train.batch_size": BATCH, "attack.eps": {"grid": [0.05, 0.1]}}
    spec = make_spec(params, seed=0, num_samples=8)
    original = build_searcher(spec)
    drive(original, 5)                  # points 0 and 1 told to Optuna, point 2 half done (trial4 finished)
    path = tmp_path / "searcher.pkl"
    original.save(str(path))
    restored = build_searcher(make_spec(params, seed=0, num_samples=8))
    restored.restore(str(path))
    nxt = original.suggest("trial5")
    assert restored.suggest("trial5") == nxt
    assert nxt["attack.eps"] == 0.1                                      # the second grid point of point 2
    for searcher in (original, restored):
        searcher.on_trial_complete("trial5", {"final": 1, **score(nxt)})
    # the rest of the sweep (points 3..7, past a completed point 2) is identical too
    rest = drive(original, 11, first_id=6)
    assert drive(restored, 11, first_id=6) == rest
    assert rest[-1] == Searcher.FINISHED and len(rest) == 11             # (8 - 3) points x 2 grid points + FINISHED
    assert [t.values for t in study_trials(restored)] == [t.values for t in study_trials(original)]


# ------------------------------------------------------------------------------ pickling
@pytest.mark.parametrize("objective", [None, TWO_TARGETS], ids=["tpe", "nsga2"])
def test_the_searcher_pickles_as_tune_pickles_it_and_continues_identically(objective):
    """Tune pickles the searcher with the Tuner's state (cloudpickle) and in every experiment
    snapshot; Optuna 5.1's NSGAIISampler holds a threading.Lock, which no pickler takes."""
    from ray import cloudpickle

    params = {"train.lr": LR, "defense.lambda_sym": LAMBDA}
    spec = make_spec(params, objective=objective, seed=0, num_samples=10)
    original = build_searcher(spec)
    drive(original, 4)
    copy = cloudpickle.loads(cloudpickle.dumps(original))
    assert type(copy) is CrossedSearch and copy is not original
    assert drive(copy, 6, first_id=4) == drive(original, 6, first_id=4)


def test_locks_inside_the_sampler_are_recreated_not_pickled(tmp_path):
    """Whatever lock an Optuna release keeps (Lock or RLock, held or not), pickling works and
    the copy gets a fresh, unlocked lock of the same kind."""
    import pickle
    import threading

    from ray import cloudpickle

    searcher = build_searcher(make_spec({"train.lr": LR}, objective=TWO_TARGETS, seed=0, num_samples=4))
    sampler = searcher._inner._sampler
    sampler._test_lock, sampler._test_rlock = threading.Lock(), threading.RLock()
    sampler._test_lock.acquire()
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(sampler)                      # what Tune met with Optuna 5.1's NSGA-II
    for copy in (pickle.loads(pickle.dumps(searcher)), cloudpickle.loads(cloudpickle.dumps(searcher))):
        inner = copy._inner._sampler
        assert type(inner._test_lock) is type(threading.Lock()) and not inner._test_lock.locked()
        assert type(inner._test_rlock) is type(threading.RLock())
        assert inner._test_lock is not sampler._test_lock
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = build_searcher(make_spec({"train.lr": LR}, objective=TWO_TARGETS, seed=0, num_samples=4))
    restored.restore(str(path))
    assert not restored._inner._sampler._test_lock.locked()
