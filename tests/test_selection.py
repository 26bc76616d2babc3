"""Selection never sees the test set (methods.md "Conventions", issue "Honest numbers" §1).

A real SQLite MLflow store holds a sweep whose two configurations disagree: one wins on the
validation split, the other on the test set. The sweep must choose the validation winner and
report its test numbers beside (never instead of) the validation values it was chosen on.
"""
from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.config import ConfigError
from distfair.search_space import SweepSpec, Target
from distfair.sweep import SweepReport, best_metrics, choose, collect_trials, load_sweep, objective_on_test

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
            tracking._log(client, run_id, metrics=tracking._metrics(
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
    assert logged["best.objective.val_worst_class_acc.mean"] == pytest.approx(0.79)
    assert logged["best.validation.val_worst_class_acc.mean"] == pytest.approx(0.79)
    assert logged["best.test.worst_class_acc.mean"] == pytest.approx(0.51)
    assert logged["best.test.worst_class_acc.std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert not any(k.startswith("best.") and k.split(".")[1] not in ("objective", "validation", "test", "n_seeds")
                   for k in logged)

    report = SweepReport(experiment="selection", sweep_run_id=sweep_run, spec=SweepSpec(objective=[TARGET]),
                         trials=trials, best=best, pareto=pareto)
    doc = report.to_json()
    assert doc["selected_on"] == "validation" and doc["best"]["selected_on"] == "validation"
    assert doc["best"]["params"] == {"name": "val_winner"}
    assert doc["best"]["objective"] == {"val_worst_class_acc.mean": pytest.approx(0.79)}
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
