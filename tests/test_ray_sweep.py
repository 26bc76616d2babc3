"""``distfair sweep`` end to end: real Ray (its own local instance, in a subprocess), real
Optuna, a real SQLite MLflow store read back through MLflow's client."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.search_space import pareto_front

pytestmark = pytest.mark.ray


def sweep_file(tmp_path, tiny_cfg_dict, space: dict, name: str = "sw.yaml"):
    data = dict(tiny_cfg_dict, space=space)
    data["eval"] = {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5}]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def run_sweep_cli(path, cwd, *extra, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "distfair.cli", "sweep", str(path), "--experiment", "sw",
                           "--json", *extra], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def records(db):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_role = {role: [r for r in runs if r.data.tags.get("distfair.role") == role]
               for role in ("sweep", "configuration", "seed")}
    return client, by_role


def child_values(by_role, config_run_id, metric):
    return np.array([r.data.metrics[metric] for r in by_role["seed"]
                     if r.data.tags["mlflow.parentRunId"] == config_run_id])


LAMBDA = {"type": "float", "low": 0.05, "high": 2.0, "log": True}
LR = {"type": "float", "low": 0.01, "high": 0.1, "log": True}


def test_sweep_records_nested_runs_and_reports_the_best_under_the_objective(tmp_path, tiny_cfg_dict):
    space = {"params": {"defense.lambda_sym": LAMBDA, "train.lr": LR},
             "objective": {"metric": "val_robust_acc", "stat": "mean_minus_std", "k": 1.0, "mode": "max"},
             "search": {"sampler": "tpe", "seed": 3, "num_samples": 3}}
    report = run_sweep_cli(sweep_file(tmp_path, tiny_cfg_dict, space), tmp_path)
    client, by_role = records(tmp_path / "mlflow.db")
    assert len(by_role["sweep"]) == 1 and by_role["sweep"][0].info.run_id == report["sweep_run_id"]
    sweep_id = report["sweep_run_id"]
    configs = by_role["configuration"]
    assert len(configs) == 3 and len(by_role["seed"]) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == sweep_id for c in configs)
    assert Counter(s.data.tags["mlflow.parentRunId"] for s in by_role["seed"]) == {c.info.run_id: 2 for c in configs}
    assert all(r.info.status == "FINISHED" for rs in by_role.values() for r in rs)

    recomputed, on_test = {}, {}
    for c in configs:
        values = child_values(by_role, c.info.run_id, "val_robust_acc")
        assert c.data.metrics["val_robust_acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert c.data.metrics["val_robust_acc_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        recomputed[c.info.run_id] = values.mean() - values.std(ddof=1)
        on_test[c.info.run_id] = child_values(by_role, c.info.run_id, "robust_acc").mean()
    best_run = max(recomputed, key=recomputed.get)          # chosen on validation only
    trial_of = {t["parent_run_id"]: t for t in report["trials"]}
    assert set(trial_of) == set(recomputed)
    assert report["best"]["params"] == trial_of[best_run]["params"]
    assert report["best"]["selected_on"] == "validation"
    assert report["best"]["objective"]["val_robust_acc.mean_minus_std"] == pytest.approx(recomputed[best_run])
    # its test numbers are reported beside, kept apart
    assert report["best"]["test"]["robust_acc"]["mean"] == pytest.approx(on_test[best_run])
    assert "robust_acc" not in report["best"]["validation"] and "val_robust_acc" in report["best"]["validation"]
    sweep = client.get_run(sweep_id)
    assert sweep.data.metrics["best.objective.val_robust_acc.mean_minus_std"] == pytest.approx(recomputed[best_run])
    assert sweep.data.metrics["best.test.robust_acc.mean"] == pytest.approx(on_test[best_run])
    assert sweep.data.metrics["best.validation.val_worst_class_acc.mean"] == pytest.approx(
        child_values(by_role, best_run, "val_worst_class_acc").mean())
    assert sweep.data.params["selected_on"] == "validation"
    assert json.loads(sweep.data.params["best.train.lr"]) == pytest.approx(report["best"]["params"]["train.lr"]) \
        if sweep.data.params["best.train.lr"].startswith("[") else \
        float(sweep.data.params["best.train.lr"]) == pytest.approx(report["best"]["params"]["train.lr"])
    assert sweep.data.metrics["n_configurations"] == 3
    # the Optuna study is inspectable without Ray
    names = {a.path for a in client.list_artifacts(sweep_id)}
    assert {"trials.csv", "optuna_study.db", "history.png"} <= names
    local = client.download_artifacts(sweep_id, "optuna_study.db", str(tmp_path))
    study = optuna.load_study(study_name="distfair", storage=f"sqlite:///{local}")
    assert len(study.trials) == 3
    assert sorted(t.values[0] for t in study.trials) == pytest.approx(sorted(recomputed.values()))


def test_multi_objective_sweep_reports_exactly_the_non_dominated_configurations(tmp_path, tiny_cfg_dict):
    objective = [{"metric": "val_robust_acc", "stat": "mean", "mode": "max"},
                 {"metric": "val_acc_gap", "stat": "mean", "mode": "min"}]
    space = {"params": {"defense.lambda_sym": LAMBDA, "train.lr": LR}, "objective": objective,
             "search": {"seed": 0, "num_samples": 4}}
    report = run_sweep_cli(sweep_file(tmp_path, tiny_cfg_dict, space), tmp_path)
    client, by_role = records(tmp_path / "mlflow.db")
    configs = by_role["configuration"]
    assert len(configs) == 4
    points = {c.info.run_id: [child_values(by_role, c.info.run_id, "val_robust_acc").mean(),
                              child_values(by_role, c.info.run_id, "val_acc_gap").mean()] for c in configs}
    ids = list(points)
    front = {ids[i] for i in pareto_front([points[i] for i in ids], ["max", "min"])}
    assert {t["parent_run_id"] for t in report["pareto"]} == front
    assert report["best"]["params"] in [t["params"] for t in report["pareto"]]
    names = {a.path for a in client.list_artifacts(report["sweep_run_id"])}
    assert {"pareto.json", "pareto.png"} <= names


def test_resume_after_the_driver_was_killed_runs_every_configuration_seed_once(tmp_path, tiny_cfg_dict):
    space = {"params": {"defense.lambda_sym": LAMBDA},
             "objective": {"metric": "val_worst_class_acc", "stat": "mean", "mode": "max"},
             "search": {"seed": 1, "num_samples": 3, "max_concurrent": 1}}
    path = sweep_file(tmp_path, tiny_cfg_dict, space)
    db = tmp_path / "mlflow.db"
    tracking.prepare_experiment(f"sqlite:///{db}", "sw")       # one creator of the fresh store
    proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "sweep", str(path), "--experiment", "sw"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        _, by_role = records(db)
        if any(c.info.status == "FINISHED" for c in by_role["configuration"]):
            break
    else:
        proc.kill()
        pytest.fail("no configuration finished in time")
    os.killpg(proc.pid, signal.SIGKILL)                          # the driver dies without cleaning up
    proc.wait()
    time.sleep(3)
    report = run_sweep_cli(path, tmp_path, "--resume")
    _, by_role = records(db)
    assert len(by_role["sweep"]) == 1 and len(by_role["configuration"]) == 3
    pairs = Counter((s.data.tags["mlflow.parentRunId"], s.data.tags["distfair.seed"]) for s in by_role["seed"])
    assert len(pairs) == 6 and set(pairs.values()) == {1}          # every (configuration, seed) exactly once
    assert all(r.info.status == "FINISHED" for rs in by_role.values() for r in rs)
    assert len(report["trials"]) == 3


def test_grid_dimensions_are_crossed_and_early_stopping_leaves_no_open_run(tmp_path, tiny_cfg_dict):
    tiny_cfg_dict["train"]["epochs"] = 4
    space = {"params": {"train.lr": LR, "attack.eps": {"grid": [0.05, 0.15]}},
             "objective": {"metric": "val_robust_acc", "stat": "mean", "mode": "max"},
             "search": {"sampler": "random", "seed": 0, "num_samples": 2,
                        "early_stopping": {"metric": "val_robust_acc", "mode": "max", "grace_period": 1,
                                           "reduction_factor": 2}}}
    report = run_sweep_cli(sweep_file(tmp_path, tiny_cfg_dict, space), tmp_path)
    _, by_role = records(tmp_path / "mlflow.db")
    params = [t["params"] for t in report["trials"]]
    assert len(params) == 4
    lrs = Counter(p["train.lr"] for p in params)
    assert len(lrs) == 2 and set(lrs.values()) == {2}                # each sampled lr at both grid points
    assert {(p["train.lr"], p["attack.eps"]) for p in params} == {(lr, e) for lr in lrs for e in (0.05, 0.15)}
    assert not [r for rs in by_role.values() for r in rs if r.info.status in ("RUNNING", "SCHEDULED")]
