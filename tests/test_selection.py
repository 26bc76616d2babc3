"""Selection never sees the test set (methods.md "Conventions", issue "Honest numbers" §1).

A real SQLite MLflow store holds a sweep whose two configurations disagree: one wins on the
validation split, the other on the test set. The sweep must choose the validation winner and
report its test numbers beside (never instead of) the validation values it was chosen on.
"""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from distfair import tracking
from distfair.cli import format_sweep
from distfair.config import ConfigError
from distfair.config.space import SweepSpec, Target
from distfair.experiment.sweep import (SweepReport, best_metrics, choose, collect_trials, history_figure, load_sweep,
                            objective_on_test, sweep_artifacts)
from distfair.tracking import writes as tracking_writes

#: a statistic of a metric named the dotted way (``worst_class_acc.mean``) instead of MLflow's
#: ``worst_class_acc_mean``: nothing a sweep reports may use it
DOTTED = re.compile(r"\.(mean|std|min|max|median|n|ci95_low|ci95_high|mean_minus_std|mean_plus_std)\b")

# (val_worst_class_acc, worst_class_acc) per seed. "val_winner" is better on validation and
# worse on test; "test_winner" the opposite: a sweep that looked at test would pick it.
SEEDS = {
    "val_winner": [(0.80, 0.50), (0.78, 0.52)],
    "test_winner": [(0.60, 0.90), (0.62, 0.88)],
}
TARGET = Target("val_worst_class_acc", "mean", "max")


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.prepare_experiment(uri, "selection")
    sweep_run = tracking.start_sweep_run(uri, experiment_id, name="sw", params={}, lookup={"distfair.sweep_name": "sw"})
    client = MlflowClient(uri)
    for trial, seeds in SEEDS.items():
        parent = tracking.start_parent_run(
            uri, experiment_id, {"defense.lambda_sym": 1.0}, run_name=trial,
            tags={tracking.TAG_PARENT: sweep_run, "distfair.trial_id": trial,
                  "distfair.trial_params": f'{{"name": "{trial}"}}'})
        for seed, (val, test) in enumerate(seeds):
            run_id = tracking.get_or_create_seed_run(uri, experiment_id, parent, seed)
            logger = tracking.SeedRunLogger(uri, run_id)
            # a per-epoch curve first (step = epoch), then the final values after training
            logger.log_epoch(0, {"epoch": 0, "val_worst_class_acc": 0.1, "train_loss": 1.0})
            tracking_writes._log(client, run_id, metrics=tracking_writes._metrics(
                {"val_worst_class_acc": val, "worst_class_acc": test, "val_clean_acc": 0.9, "clean_acc": 0.95,
                 "train_time_s": 3.0}, step=1))
            client.set_terminated(run_id, "FINISHED")
        client.set_terminated(parent, "FINISHED")
    return uri, experiment_id, sweep_run


def test_the_sweep_chooses_the_validation_winner_and_reports_its_test_numbers(tmp_path):
    uri, experiment_id, sweep_run = _store(tmp_path)
    trials = collect_trials(uri, experiment_id, sweep_run, [TARGET])
    by_name = {t.params["name"]: t for t in trials}
    best, pareto = choose(trials, [TARGET])
    assert best.params == {"name": "val_winner"}
    assert best.objective == [pytest.approx(0.79)]                      # the final value, not the epoch-0 curve
    # test metrics are reported, kept apart from the validation values
    assert best.validation["val_worst_class_acc"]["mean"] == pytest.approx(0.79)
    assert best.test["worst_class_acc"]["mean"] == pytest.approx(0.51)
    assert "worst_class_acc" not in best.validation and "val_worst_class_acc" not in best.test
    assert "train_time_s" not in best.validation and "train_time_s" not in best.test
    assert objective_on_test(TARGET, best) == pytest.approx(0.51)
    assert by_name["test_winner"].test["worst_class_acc"]["mean"] == pytest.approx(0.89)   # better on test, not chosen

    logged = best_metrics(best, [TARGET])
    assert logged["best.objective.val_worst_class_acc_mean"] == pytest.approx(0.79)
    assert logged["best.validation.val_worst_class_acc_mean"] == pytest.approx(0.79)
    assert logged["best.test.worst_class_acc_mean"] == pytest.approx(0.51)
    assert logged["best.test.worst_class_acc_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert not any(k.startswith("best.") and k.split(".")[1] not in ("objective", "validation", "test", "n_seeds")
                   for k in logged)

    report = SweepReport(experiment="selection", sweep_run_id=sweep_run, spec=SweepSpec(objective=[TARGET]),
                         trials=trials, best=best, pareto=pareto)
    doc = report.to_json()
    assert doc["selected_on"] == "validation" and doc["best"]["selected_on"] == "validation"
    assert doc["best"]["params"] == {"name": "val_winner"}
    assert doc["best"]["objective"] == {"val_worst_class_acc_mean": pytest.approx(0.79)}
    assert doc["best"]["test"]["worst_class_acc"]["mean"] == pytest.approx(0.51)
    assert set(doc["best"]["validation"]) == {"val_worst_class_acc", "val_clean_acc"}
    assert set(doc["best"]["test"]) == {"worst_class_acc", "clean_acc"}


def test_a_shipped_style_file_with_a_test_objective_is_refused(write_config):
    doc = {"defense": {"name": "syfar"}, "dataset": {"name": "synthetic", "num_samples": 60, "num_classes": 3},
           "model": {"name": "mlp"}, "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
           "eval": {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5}]},
           "space": {"params": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                     "objective": {"metric": "worst_class_acc", "stat": "mean_minus_std"},
                     "search": {"early_stopping": {"metric": "robust_acc"}}}}
    path = str(write_config(doc))
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    assert [k for k, _ in caught.value.problems] == ["space.objective.metric", "space.search.early_stopping.metric"]
    assert f"{path}: space.objective.metric: 'worst_class_acc' is a test-set metric" in str(caught.value)
    assert "use 'val_worst_class_acc'" in str(caught.value)


def _t_interval(values):
    """The 95% t-interval of the mean, clipped to [0, 1] as for every accuracy (docs/methods/metrics.md)."""
    values = np.asarray(values, dtype=float)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return max(low, 0.0), min(high, 1.0)


def test_spread_of_the_objective_on_validation_and_test_in_trials_csv_summary_and_history(tmp_path):
    """trials.csv, the printed summary and history.png carry each configuration's spread over
    seeds (mean, std, n, 95% t-interval) of the objective metric on validation and, labelled
    test, of the matching test metric; every name is MLflow's ``<metric>_<stat>``."""
    uri, experiment_id, sweep_run = _store(tmp_path)
    trials = collect_trials(uri, experiment_id, sweep_run, [TARGET])
    best, pareto = choose(trials, [TARGET])
    report = SweepReport(experiment="selection", sweep_run_id=sweep_run, spec=SweepSpec(objective=[TARGET]),
                         trials=trials, best=best, pareto=pareto)
    out = tmp_path / "artifacts"
    out.mkdir()
    files = sweep_artifacts(report, [TARGET], out)
    with files["study"].open() as f:
        rows = {row["parent_run_id"]: row for row in csv.DictReader(f)}
        header = list(rows[best.parent_run_id])
    spread = [f"{p}{m}_{s}" for p, m in (("", "val_worst_class_acc"), ("test:", "worst_class_acc"))
              for s in ("mean", "std", "n", "ci95_low", "ci95_high")]
    # the objective and the same statistic on test first, then the spread (a column once)
    columns = header[header.index("name") + 1:]
    assert columns[:2] == ["val_worst_class_acc_mean", "test:worst_class_acc_mean"]
    assert columns[-2:] == ["n_seeds", "failure"]          # failure: why a configuration failed, else empty
    assert sorted(columns[:-2]) == sorted(spread)
    for trial in trials:
        row = rows[trial.parent_run_id]
        val, test = (np.array(v) for v in zip(*SEEDS[trial.params["name"]]))
        for prefix, values in (("val_worst_class_acc", val), ("test:worst_class_acc", test)):
            assert float(row[f"{prefix}_mean"]) == pytest.approx(values.mean())
            assert float(row[f"{prefix}_std"]) == pytest.approx(values.std(ddof=1))
            assert int(row[f"{prefix}_n"]) == 2
            low, high = _t_interval(values)
            assert (float(row[f"{prefix}_ci95_low"]), float(row[f"{prefix}_ci95_high"])) == (
                pytest.approx(low), pytest.approx(high))
    assert not [h for h in header if DOTTED.search(h)]
    assert not [k for k in best_metrics(best, [TARGET]) if DOTTED.search(k)]
    assert not DOTTED.search(json.dumps(report.to_json()))
    assert best.validation["val_worst_class_acc"]["n"] == 2

    printed = format_sweep(report)
    assert "objective: max val_worst_class_acc_mean" in printed
    assert "test worst_class_acc_mean=0.5100" in printed and "validation val_worst_class_acc_mean=0.7900" in printed
    low, high = _t_interval([0.80, 0.78])
    assert f"validation val_worst_class_acc  0.7900 ± {np.std([0.80, 0.78], ddof=1):.4f} (n=2) 95% CI " \
           f"[{low:.4f}, {high:.4f}]" in printed
    low, high = _t_interval([0.50, 0.52])
    assert f"test       worst_class_acc      0.5100 ± {np.std([0.50, 0.52], ddof=1):.4f} (n=2) 95% CI " \
           f"[{low:.4f}, {high:.4f}]" in printed
    assert not DOTTED.search(printed)

    # history.png: every seed as a point, mean ± std, integer ticks labelled with the trial
    # ids, the running best, the chosen configuration ringed; drawn from the same numbers
    assert files["history_png"].stat().st_size > 0
    ax = history_figure(report, [TARGET]).axes[0]
    assert list(ax.get_xticks()) == [0, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.trial_id for t in trials]
    seeds = [c.get_offsets() for c in ax.collections if c.get_gid() == "seeds"]
    for x, (trial, offsets) in enumerate(zip(trials, seeds)):
        assert list(offsets[:, 0]) == [x, x]
        assert sorted(offsets[:, 1]) == pytest.approx(sorted(v for v, _ in SEEDS[trial.params["name"]]))
    means = [line.get_ydata()[0] for line in ax.lines if line.get_gid() == "mean"]
    assert means == pytest.approx([t.validation["val_worst_class_acc"]["mean"] for t in trials])
    chosen = [c.get_offsets() for c in ax.collections if c.get_gid() == "chosen"]
    assert len(chosen) == 1 and chosen[0][0][0] == trials.index(best)
    running = next(line for line in ax.lines if line.get_gid() == "running_best").get_ydata()
    objective = [t.objective[0] for t in trials]
    assert list(running) == pytest.approx([max(objective[:i + 1]) for i in range(len(trials))])
