"""Racing seeds in sweeps (issue 30): the decision of one wave (``distfair.experiment.racing``), its
offline replay (``distfair.experiment.race_replay``) and ``distfair race-replay`` on a real SQLite
MLflow store. No Ray."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from distfair.config.space import Target
from distfair.experiment.race_replay import (format_table, replay, replay_grid, within_noise)
from distfair.experiment.racing import (RacingSpec, _wilcoxon_less, fewest_seeds_to_stop, next_wave, race_step)

ROBUST = Target("val_robust_acc", "mean", "max")
WORST = Target("val_worst_class_acc", "mean", "max")
SPEC = RacingSpec(min_seeds=5, max_seeds=10)


def _seeds(values) -> dict[int, float]:
    return {i: v for i, v in enumerate(values)}


BEST = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.78, 0.84]


def _worse(by: float, n: int) -> list[float]:
    """Worse than BEST on each of the first n seeds, by a different amount each (no ties)."""
    return [v - by - 0.001 * i for i, v in enumerate(BEST[:n])]


# ------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("kwargs, words", [
    ({"min_seeds": 1, "max_seeds": 5}, "min_seeds must be an integer >= 2"),
    ({"min_seeds": 5, "max_seeds": 4}, "max_seeds must be >= min_seeds (5)"),
    ({"min_seeds": 3, "max_seeds": 5, "alpha": 0.0}, "alpha must be a number in (0, 1)"),
    ({"min_seeds": 3, "max_seeds": 5, "alpha": 1.0}, "alpha must be a number in (0, 1)"),
    ({"min_seeds": 3, "max_seeds": 5, "test": "welch"}, "test must be one of wilcoxon, ttest"),
    ({"min_seeds": 3, "max_seeds": 5, "wave": 0}, "wave must be an integer >= 1"),
    ({"min_seeds": True, "max_seeds": 5}, "min_seeds must be an integer"),
])
def test_a_bad_spec_is_refused_with_the_field_named(kwargs, words):
    with pytest.raises(ValueError) as err:
        RacingSpec(**kwargs)
    assert words in str(err.value)


def test_the_small_n_limit_of_the_wilcoxon_test_is_a_warning_not_an_error():
    assert fewest_seeds_to_stop(0.05, 10) == 5 and fewest_seeds_to_stop(0.1, 10) == 4
    assert fewest_seeds_to_stop(0.01, 10) == 7 and fewest_seeds_to_stop(0.05, 4) is None
    (early,) = RacingSpec(min_seeds=3, max_seeds=10).warnings()
    assert "nothing can stop before 5 paired seeds" in early and "min_seeds 3" in early
    (never,) = RacingSpec(min_seeds=2, max_seeds=4).warnings()
    assert "no configuration can ever stop" in never
    assert RacingSpec(min_seeds=5, max_seeds=10).warnings() == []
    assert RacingSpec(min_seeds=4, max_seeds=10, alpha=0.1).warnings() == []
    assert RacingSpec(min_seeds=2, max_seeds=4, test="ttest").warnings() == []


# --------------------------------------------------------------------------- one objective
def test_a_configuration_worse_on_six_paired_seeds_stops_with_p_one_in_64():
    decision = race_step({"best": _seeds(BEST[:6]), "worse": _seeds(_worse(0.02, 6))}, [ROBUST], SPEC)
    assert decision.best == "best" and decision.survivors == ("best",)
    stopped = decision.stopped["worse"]
    assert stopped.against == "best" and stopped.n == 6 and stopped.target == "val_robust_acc_mean"
    assert stopped.pvalue == pytest.approx(1 / 64) and stopped.statistic == 0 and stopped.significant


def test_worse_on_four_paired_seeds_does_not_stop_at_alpha_005():
    spec = RacingSpec(min_seeds=4, max_seeds=10)
    decision = race_step({"best": _seeds(BEST[:4]), "worse": _seeds(_worse(0.02, 4))}, [ROBUST], spec)
    assert decision.stopped == {} and decision.survivors == ("best", "worse")
    assert decision.tests["worse"].pvalue == pytest.approx(1 / 16) and not decision.tests["worse"].significant


def test_fewer_paired_seeds_than_min_seeds_are_not_tested():
    results = {"best": _seeds(BEST[:6]), "worse": _seeds(_worse(0.02, 6))}
    assert race_step(results, [ROBUST], RacingSpec(min_seeds=7, max_seeds=10)).stopped == {}
    # only seeds both have are paired: 6 here, although "worse" has 8
    results["worse"].update({6: 0.1, 7: 0.1})
    decision = race_step(results, [ROBUST], RacingSpec(min_seeds=6, max_seeds=10))
    assert decision.stopped["worse"].n == 6


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_a_configuration_tied_on_every_seed_never_stops(test):
    spec = RacingSpec(min_seeds=5, max_seeds=10, test=test, alpha=0.5)
    decision = race_step({"a": _seeds(BEST), "b": _seeds(BEST)}, [ROBUST], spec)
    assert decision.stopped == {} and decision.tests["b"].pvalue is None


def test_the_best_never_stops_and_an_equal_objective_does_not_stop_on_ranks():
    # nine seeds 1/64 worse, one 9/64 better (exact in binary): the same mean, yet the signed
    # ranks lean "worse" (p = 47/1024 over the 2^10 sign flips)
    base = [0.5 + i / 64 for i in range(10)]
    other = [v - 1 / 64 for v in base[:9]] + [base[9] + 9 / 64]
    assert math.fsum(other) == math.fsum(base)
    spec = RacingSpec(min_seeds=5, max_seeds=10)
    decision = race_step({"base": _seeds(base), "other": _seeds(other)}, [ROBUST], spec)
    assert decision.best == "base" and decision.stopped == {}
    assert decision.tests["other"].pvalue == pytest.approx(47 / 1024) and not decision.tests["other"].significant
    worse = race_step({"base": _seeds(base), "low": _seeds([v - 0.1 for v in base])}, [ROBUST], spec)
    assert "base" in worse.survivors and set(worse.stopped) == {"low"} and worse.tests.keys() == {"low"}


def test_the_best_is_chosen_by_the_objective_statistic_not_the_mean():
    steady = [0.80] * 6
    lucky = [0.95, 0.70, 0.95, 0.70, 0.95, 0.70]             # higher mean, large spread
    by_mean = race_step({"steady": _seeds(steady), "lucky": _seeds(lucky)}, [ROBUST], SPEC)
    penalised = Target("val_robust_acc", "mean_minus_std", "max")
    by_spread = race_step({"steady": _seeds(steady), "lucky": _seeds(lucky)}, [penalised], SPEC)
    assert by_mean.best == "lucky" and by_spread.best == "steady"
    assert by_spread.objective["steady"] == (pytest.approx(0.80),)


def test_mode_min_mirrors_max():
    low = Target("val_acc_gap", "mean", "min")
    results = {"best": _seeds(BEST[:6]), "worse": _seeds(_worse(0.02, 6)), "near": _seeds(_worse(0.0, 6))}
    as_max = race_step(results, [Target("val_acc_gap", "mean", "max")], SPEC)
    as_min = race_step({k: {s: -v for s, v in r.items()} for k, r in results.items()}, [low], SPEC)
    assert as_max.best == as_min.best == "best"
    assert set(as_max.stopped) == set(as_min.stopped) == {"worse", "near"}
    for name in as_max.stopped:
        assert as_min.stopped[name].pvalue == pytest.approx(as_max.stopped[name].pvalue)
    # and the other way round: higher is worse under min
    flipped = race_step({"best": _seeds(BEST[:6]), "worse": _seeds(_worse(0.02, 6))}, [low], SPEC)
    assert flipped.best == "worse" and set(flipped.stopped) == {"best"}


def test_the_paired_t_test_can_stop_where_wilcoxon_cannot_yet():
    results = {"best": _seeds(BEST[:3]), "worse": _seeds(_worse(0.05, 3))}
    assert race_step(results, [ROBUST], RacingSpec(min_seeds=3, max_seeds=10)).stopped == {}
    decision = race_step(results, [ROBUST], RacingSpec(min_seeds=3, max_seeds=10, test="ttest"))
    expected = stats.ttest_rel(_worse(0.05, 3), BEST[:3], alternative="less").pvalue
    assert decision.stopped["worse"].pvalue == pytest.approx(expected) and expected < 0.05


def test_values_that_are_not_finite_or_of_the_wrong_count_are_refused():
    with pytest.raises(ValueError, match="worse, seed 1: values must be finite"):
        race_step({"best": _seeds(BEST), "worse": {0: 0.5, 1: math.nan}}, [ROBUST], SPEC)
    with pytest.raises(ValueError, match=r"best, seed 0: 1 value\(s\) for 2 target"):
        race_step({"best": _seeds(BEST)}, [ROBUST, WORST], SPEC)
    with pytest.raises(ValueError, match="spread, not their location"):
        race_step({"best": _seeds(BEST)}, [Target("val_robust_acc", "std", "min")], SPEC)


@pytest.mark.parametrize("d", [
    [-1, -1, -2, -3, -4, -5], [0, -1, -2, -3, -4, -5, 1], [-1, -1, -1, 1, 1, -2, 0, 0],
    [-2, -2, -2, -2, 2, -1, -3, -3, -3, -4, 2], [0.5, -0.5, 1, -1, -1.5],
    [-1, -2, -3, -4, -5, -6, -7], [-1, -1, -2, -2, -3, -3, -4, -4, -5, -5, -6, -6, -7, -7, 8],
])
def test_the_fast_wilcoxon_path_gives_scipys_own_p_values(d):
    d = np.asarray(d, dtype=float) / 290
    ours, theirs = _wilcoxon_less(d), stats.wilcoxon(d, alternative="less")
    assert ours.pvalue == pytest.approx(theirs.pvalue, abs=1e-12)
    assert ours.statistic == pytest.approx(theirs.statistic)


# -------------------------------------------------------------------------- several objectives
def _two(robust, worst):
    return {i: [r, w] for i, (r, w) in enumerate(zip(robust, worst))}


def test_a_pareto_front_member_never_stops_and_a_dominated_one_does():
    up = [0.60 + 0.01 * i for i in range(6)]
    a = _two([v + 0.2 for v in up], up)                           # best robust accuracy
    b = _two(up, [v + 0.2 for v in up])                           # best worst-class accuracy
    c = _two([v + 0.1 - 0.001 * i for i, v in enumerate(up)], [v - 0.01 * (i + 1) for i, v in enumerate(up)])
    decision = race_step({"a": a, "b": b, "c": c}, [ROBUST, WORST], SPEC)
    assert set(decision.front) == {"a", "b"} and decision.best == "a"
    # b is significantly worse than a in robust accuracy on every seed, yet on the front: it stays
    assert "b" in decision.survivors and "b" not in decision.tests
    # c is below a on both targets: dominated, significantly so on robust accuracy (p = 1/64)
    assert decision.stopped["c"].against == "a" and decision.stopped["c"].pvalue == pytest.approx(1 / 64)


def test_a_front_member_by_its_own_seeds_survives_being_dominated_on_the_paired_ones():
    up = [0.60 + 0.01 * i for i in range(6)]
    a = _two([v + 0.2 for v in up], [v + 0.05 for v in up])
    # on the six seeds both have, b is below a on both targets, every seed; its two extra seeds
    # lift its own worst-class mean above a's: on the front of the objectives, so it stays
    b = _two([v + 0.1 - 0.001 * i for i, v in enumerate(up)] + [0.7, 0.7], up + [0.99, 0.99])
    decision = race_step({"a": a, "b": b}, [ROBUST, WORST], SPEC)
    assert set(decision.front) == {"a", "b"} and decision.stopped == {}
    without_extra = race_step({"a": a, "b": {s: v for s, v in b.items() if s < 6}}, [ROBUST, WORST], SPEC)
    assert without_extra.stopped["b"].against == "a"


def test_dominated_without_significance_survives():
    up = [0.60 + 0.01 * i for i in range(6)]
    a = _two([v + 0.2 for v in up], [v + 0.2 for v in up])
    # below a on average in both targets, but above it on two of six seeds in each
    noisy = [-0.3, 0.05, -0.3, 0.05, -0.3, -0.3]
    c = _two([v + 0.2 + e for v, e in zip(up, noisy)], [v + 0.2 + e for v, e in zip(up, noisy)])
    decision = race_step({"a": a, "c": c}, [ROBUST, WORST], SPEC)
    assert decision.front == ("a",) and decision.stopped == {} and not decision.tests["c"].significant


def test_a_std_target_counts_in_dominance_but_is_never_tested():
    spread = Target("val_robust_acc", "std", "min")
    steady = [0.70, 0.71, 0.70, 0.71, 0.70, 0.71]
    wobbly = [0.80, 0.90, 0.78, 0.95, 0.82, 0.99]
    worse_wobbly = [v - 0.15 + 0.5 * (v - np.mean(wobbly)) for v in wobbly]   # lower on every seed, less steady
    rows = {n: {i: [v, v] for i, v in enumerate(vals)} for n, vals in
            (("steady", steady), ("wobbly", wobbly), ("worse", worse_wobbly))}
    decision = race_step(rows, [ROBUST, spread], SPEC)
    assert set(decision.front) == {"steady", "wobbly"}           # steady is on the front through its std
    assert decision.stopped["worse"].against == "wobbly" and decision.stopped["worse"].target == ROBUST.name
    assert all(t.target == ROBUST.name for t in decision.tests.values())


def test_next_wave_fills_to_min_seeds_then_adds_a_wave_up_to_max():
    spec = RacingSpec(min_seeds=3, max_seeds=8, wave=2)
    assert next_wave({"a": 0, "b": 1, "c": 3, "d": 7, "e": 8}, spec) == {"a": 3, "b": 2, "c": 2, "d": 1, "e": 0}


# --------------------------------------------------------------------------------- the replay
def _synthetic(n_configs: int, n_seeds: int, gap: float, rng_seed: int, noise: float = 0.02) -> dict[str, np.ndarray]:
    """Configuration i has mean 0.7 + gap * i; a shared per-seed effect makes the seeds paired."""
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, 0.03, n_seeds)
    return {f"c{i}": 0.7 + gap * i + seed_effect + rng.normal(0, noise, n_seeds) for i in range(n_configs)}


def test_replay_keeps_a_clearly_best_configuration_on_fewer_seed_runs():
    per_seed = _synthetic(8, 10, gap=0.03, rng_seed=1)
    summary = replay(per_seed, [ROBUST], RacingSpec(min_seeds=5, max_seeds=10, alpha=0.05), orders=40, rng_seed=0)
    assert summary.fixed_choice == "c7" and summary.n_seeds == 10 and summary.n_configurations == 8
    assert summary.p_same >= 0.95 and summary.p_within_noise >= summary.p_same
    assert summary.seed_fraction < 0.75 and summary.regret_mean >= 0
    assert "c0" not in summary.within_noise and "c7" in summary.within_noise
    row = summary.to_json()
    assert row["seed_runs_without_racing"] == 80 and row["seed_runs_mean"] == pytest.approx(80 * summary.seed_fraction)


def test_replay_stops_little_when_every_configuration_is_the_same():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 0.03, 10)
    per_seed = {f"c{i}": 0.7 + seed_effect + rng.normal(0, 0.02, 10) for i in range(6)}
    strict = replay(per_seed, [ROBUST], RacingSpec(min_seeds=5, max_seeds=10, alpha=0.01), orders=40, rng_seed=0)
    loose = replay(per_seed, [ROBUST], RacingSpec(min_seeds=4, max_seeds=10, alpha=0.2), orders=40, rng_seed=0)
    assert strict.seed_fraction > 0.9
    assert loose.seed_fraction < strict.seed_fraction                 # a looser test stops more
    # and then sometimes stops the fixed-N choice: another is chosen, within its noise or not
    assert loose.p_same < loose.p_within_noise < 1 and loose.regret_mean > 0
    assert loose.p_within_noise == sum(loose.choices.get(c, 0) for c in loose.within_noise) / 40
    assert loose.p_same == loose.choices[loose.fixed_choice] / 40


def test_replay_is_deterministic_for_a_fixed_rng_seed():
    per_seed = _synthetic(5, 8, gap=0.005, rng_seed=2)
    spec = RacingSpec(min_seeds=4, max_seeds=8, alpha=0.1)
    first = replay(per_seed, [ROBUST], spec, orders=25, rng_seed=7).to_json()
    assert replay(per_seed, [ROBUST], spec, orders=25, rng_seed=7).to_json() == first
    others = [replay(per_seed, [ROBUST], spec, orders=25, rng_seed=s).to_json() for s in (8, 9)]
    assert any(o["choices"] != first["choices"] or o["seed_fraction"] != first["seed_fraction"] for o in others)


def test_replay_with_two_objectives_and_a_max_seeds_below_the_recorded_seeds():
    one = _synthetic(4, 8, gap=0.04, rng_seed=4)
    two = {n: np.column_stack([v, v[::-1]]) for n, v in one.items()}
    summary = replay(two, [ROBUST, WORST], RacingSpec(min_seeds=5, max_seeds=6), orders=10, rng_seed=0)
    assert summary.n_seeds == 8 and summary.fixed_choice == "c3" and 0 < summary.seed_fraction <= 6 / 8


def test_replay_refuses_unequal_seeds_and_too_large_a_max_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        replay({"a": np.zeros(8), "b": np.zeros(7)}, [ROBUST], SPEC, orders=1, rng_seed=0)
    with pytest.raises(ValueError, match="max_seeds 10 is more than the 8 recorded seeds"):
        replay({"a": np.zeros(8), "b": np.ones(8)}, [ROBUST], SPEC, orders=1, rng_seed=0)


def test_the_grid_has_a_row_per_min_seeds_and_alpha_on_the_same_orders():
    per_seed = _synthetic(4, 8, gap=0.03, rng_seed=5)
    rows = replay_grid(per_seed, [ROBUST], alphas=[0.05, 0.1], min_seeds=[3, 5], orders=8, rng_seed=0)
    assert [(r.spec.min_seeds, r.spec.alpha) for r in rows] == [(3, 0.05), (3, 0.1), (5, 0.05), (5, 0.1)]
    assert all(r.spec.max_seeds == 8 for r in rows) and all(r.warnings for r in rows[:2])
    assert not rows[2].warnings and not rows[3].warnings
    table = format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["test", "alpha", "min", "max"] and len(table.splitlines()) == 6
    with pytest.raises(ValueError, match="max_seeds must be >= min_seeds"):
        replay_grid(per_seed, [ROBUST], alphas=[0.05], min_seeds=[9], orders=1)


def test_within_noise_is_the_fixed_choice_and_what_is_not_significantly_worse():
    per_seed = {"top": np.array(BEST), "near": np.array(BEST) + [0.01, -0.01] * 4,
                "low": np.array(_worse(0.05, 8))}
    spec = RacingSpec(min_seeds=5, max_seeds=8)
    assert within_noise(per_seed, "top", [ROBUST], spec) == ("top", "near")


# ----------------------------------------------------------------------- the command, on MLflow
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store with two sweeps: ``equal`` (3 configurations x seeds 0..5, t2 best) and
    ``unequal`` (2 configurations, t0 lacks seed 2), and a configuration run id to misuse."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from distfair import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('race')}/m.db"
    exp = tracking.prepare_experiment(uri, "race")
    client = MlflowClient(uri)
    objective = [{"metric": "val_robust_acc", "stat": "mean", "mode": "max", "k": 1.0}]
    sweeps, configurations = {}, []
    for sweep_name, n_configs, seeds_of in (("equal", 3, lambda i: range(6)),
                                            ("unequal", 2, lambda i: range(3 if i else 2))):
        sweep = tracking.start_sweep_run(uri, exp, name=sweep_name, params={"objective": objective},
                                         lookup={"distfair.sweep_name": sweep_name})
        for i in range(n_configs):
            config = tracking.start_parent_run(uri, exp, {}, run_name=f"t{i}", tags={
                tracking.TAG_PARENT: sweep, "distfair.trial_id": f"t{i}", "distfair.trial_params": "{}"})
            configurations.append(config)
            for seed in seeds_of(i):
                run = tracking.get_or_create_seed_run(uri, exp, config, seed)
                value = 0.6 + 0.1 * i + 0.01 * seed + 0.001 * ((seed * (i + 3)) % 5)
                client.log_batch(run, metrics=[Metric("val_robust_acc", value, 0, 0), Metric("robust_acc", 0.1, 0, 0)])
                client.set_terminated(run, "FINISHED")
            client.set_terminated(config, "FINISHED")
        client.set_terminated(sweep, "FINISHED")
        sweeps[sweep_name] = sweep
    return uri, sweeps, configurations[0]


def test_race_replay_prints_the_table_as_json(store, capfd):
    from distfair.cli import main

    uri, sweeps, _ = store
    code = main(["race-replay", "--sweep", sweeps["equal"], "--tracking-uri", uri, "--orders", "15",
                 "--alpha", "0.05,0.1", "--min-seeds", "4,5", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert document["fixed_choice"] == "t2" and document["seeds"] == list(range(6))
    assert [(r["min_seeds"], r["alpha"]) for r in document["rows"]] == [(4, 0.05), (4, 0.1), (5, 0.05), (5, 0.1)]
    for row in document["rows"]:
        assert row["max_seeds"] == 6 and row["seed_runs_without_racing"] == 18 and row["orders"] == 15
        assert row["p_same"] == 1.0 and row["seed_fraction"] < 1.0
    assert "P(same)" in err and "nothing can stop before 5 paired seeds" in err
    assert err.count("[distfair] replayed alpha") == 4


def test_race_replay_prints_a_table_for_people(store, capfd):
    from distfair.cli import main

    uri, sweeps, _ = store
    assert main(["race-replay", "--sweep", sweeps["equal"], "--tracking-uri", uri, "--orders", "5",
                 "--alpha", "0.1", "--min-seeds", "5"]) == 0
    out, _ = capfd.readouterr()
    assert "fixed-N choice over all 6 seeds: t2" in out
    assert [line.split()[:4] for line in out.splitlines() if line.startswith("wilcoxon")] == [["wilcoxon", "0.1", "5",
                                                                                               "6"]]


@pytest.mark.parametrize("which, words", [("missing", "no MLflow run"), ("configuration", "not a sweep run"),
                                          ("unequal", "unequal seed sets")])
def test_race_replay_refuses_with_exit_2(store, capfd, which, words):
    from distfair.cli import main

    uri, sweeps, configuration = store
    run_id = {"missing": "0" * 32, "configuration": configuration, "unequal": sweeps.get("unequal")}[which]
    assert main(["race-replay", "--sweep", run_id, "--tracking-uri", uri, "--orders", "2"]) == 2
    _, err = capfd.readouterr()
    assert words in err, err
    if which == "unequal":
        assert "of seeds [0, 1, 2], t0 lacks [2]." in err


def test_race_replay_help_explains_the_rule_the_columns_and_the_exit_codes(capsys):
    from distfair.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["race-replay", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for words in ("--sweep", "--orders", "--alpha", "--min-seeds", "--json", "P(same)", "1/2^n", "exit codes"):
        assert words in out, words


def test_race_replay_refuses_a_min_seeds_above_the_recorded_seeds(store, capfd):
    from distfair.cli import main

    uri, sweeps, _ = store
    assert main(["race-replay", "--sweep", sweeps["equal"], "--tracking-uri", uri, "--min-seeds", "9"]) == 2
    assert "max_seeds must be >= min_seeds" in capfd.readouterr().err


def test_importing_the_racing_modules_loads_no_ray_mlflow_torch_or_tracking():
    code = ("import sys, distfair.experiment.racing, distfair.experiment.race_replay; "
            "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'distfair.tracking') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_decision_module_never_imports_ray_mlflow_torch_or_tracking_at_any_depth():
    import ast
    from pathlib import Path

    import distfair.experiment.racing as racing

    names = set()
    for node in ast.walk(ast.parse(Path(racing.__file__).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names}
    assert "scipy.stats" in names or any(n.startswith("scipy") for n in names)
    assert not [n for n in names if n.split(".")[0] in ("ray", "mlflow", "torch") or n.startswith("distfair.tracking")]
