"""``distfair sweep`` end to end: real Ray (the session's local instance; the killed driver's
sweep in a process of its own, with its own instance), real Optuna, a real SQLite MLflow store
read back through MLflow's client."""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
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

from conftest import TINY, call_cli
from distfair import cli, tracking
from distfair.config.space import pareto_front

pytestmark = pytest.mark.ray


def sweep_file(tmp_path, tiny_cfg_dict, space: dict, name: str = "sw.yaml"):
    data = dict(tiny_cfg_dict, space=space)
    data["eval"] = {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5}]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def run_sweep_cli(path, cwd, *extra):
    """``distfair sweep --json`` called in this process, on the session's Ray instance."""
    proc = call_cli("sweep", path, "--experiment", "sw", "--json", *extra, cwd=cwd)
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


#: a statistic of a metric named the dotted way (``robust_acc.mean``) instead of MLflow's
#: ``robust_acc_mean``: nothing a sweep or its report writes may use it
DOTTED = re.compile(r"\.(mean|std|min|max|median|n|ci95_low|ci95_high|mean_minus_std|mean_plus_std)\b")


def kill_once_a_configuration_finished(path, cwd, db) -> None:
    """Start ``distfair sweep`` and SIGKILL its whole process group (the driver dies without
    cleaning up) once its first configuration run is FINISHED."""
    tracking.prepare_experiment(f"sqlite:///{db}", "sw")       # one creator of the fresh store
    proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "sweep", str(path), "--experiment", "sw"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        _, by_role = records(db)
        if any(c.info.status == "FINISHED" for c in by_role["configuration"]):
            break
    else:
        proc.kill()
        pytest.fail("no configuration finished in time")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)


@pytest.fixture(scope="module")
def tpe_sweep(tmp_path_factory):
    """One real single-objective sweep (3 configurations x 2 seeds, one configuration at a
    time), killed without cleanup once its first configuration finished, then completed with
    ``--resume``: shared by the resume test and the tests that read its record (a resumed
    sweep's record must be as complete as an uninterrupted one's): (folder holding mlflow.db,
    the resumed command's --json output)."""
    root = tmp_path_factory.mktemp("tpe_sweep")
    space = {"params": {"defense.lambda_sym": LAMBDA, "train.lr": LR},
             "objective": {"metric": "val_robust_acc", "stat": "mean_minus_std", "k": 1.0, "mode": "max"},
             "search": {"sampler": "tpe", "seed": 3, "num_samples": 3, "max_concurrent": 1}}
    path = sweep_file(root, copy.deepcopy(TINY), space)
    kill_once_a_configuration_finished(path, root, root / "mlflow.db")
    return root, run_sweep_cli(path, root, "--resume")


def test_sweep_records_nested_runs_and_reports_the_best_under_the_objective(tpe_sweep):
    tmp_path, report = tpe_sweep
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
    assert report["best"]["objective"]["val_robust_acc_mean_minus_std"] == pytest.approx(recomputed[best_run])
    # its test numbers are reported beside, kept apart
    assert report["best"]["test"]["robust_acc"]["mean"] == pytest.approx(on_test[best_run])
    assert "robust_acc" not in report["best"]["validation"] and "val_robust_acc" in report["best"]["validation"]
    sweep = client.get_run(sweep_id)
    assert sweep.data.metrics["best.objective.val_robust_acc_mean_minus_std"] == pytest.approx(recomputed[best_run])
    assert sweep.data.metrics["best.test.robust_acc_mean"] == pytest.approx(on_test[best_run])
    assert sweep.data.metrics["best.validation.val_worst_class_acc_mean"] == pytest.approx(
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
    # one naming everywhere: the sweep run's metrics, --json and trials.csv use MLflow's
    # <metric>_<stat>, as the configuration runs do (val_robust_acc_mean)
    assert not [k for k in sweep.data.metrics if DOTTED.search(k)]
    assert not DOTTED.search(json.dumps(report))
    with open(client.download_artifacts(sweep_id, "trials.csv", str(tmp_path))) as f:
        rows = list(csv.DictReader(f))
    assert not [h for h in rows[0] if DOTTED.search(h)]
    by_run = {r["parent_run_id"]: r for r in rows}
    for c in configs:      # the spread columns hold what the configuration runs logged
        for column, key in (("val_robust_acc_mean", "val_robust_acc_mean"), ("val_robust_acc_std", "val_robust_acc_std"),
                            ("val_robust_acc_ci95_low", "val_robust_acc_ci95_low"),
                            ("test:robust_acc_mean", "robust_acc_mean"), ("test:robust_acc_ci95_high",
                                                                          "robust_acc_ci95_high")):
            assert float(by_run[c.info.run_id][column]) == pytest.approx(c.data.metrics[key]), column
        assert int(by_run[c.info.run_id]["val_robust_acc_n"]) == c.data.metrics["n_seeds"] == 2


def tune_trial_pids(root) -> dict[str, set[int]]:
    """Trial id -> the process ids of its Tune trial driver, from Tune's own result files."""
    pids: dict[str, set[int]] = {}
    for path in root.rglob("result.json"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break                       # not Tune's (one JSON object per line)
            if isinstance(row, dict) and "trial_id" in row and "pid" in row:
                pids.setdefault(row["trial_id"], set()).add(row["pid"])
    return pids


def test_a_sweep_without_early_stopping_reuses_its_trial_driver_process(tpe_sweep):
    """Three configurations, one at a time on 2 CPUs: a command's trial driver process runs
    every configuration it starts (Tune's ``reuse_actors``), so torch, MLflow and distfair are
    imported once, not per configuration (without reuse every configuration has its own)."""
    root, report = tpe_sweep
    pids = tune_trial_pids(root)
    assert len(pids) == 3, pids
    runs_of = Counter(pid for trial_pids in pids.values() for pid in trial_pids)
    assert len(runs_of) <= 2, pids                                  # at most one trial driver per command
    assert max(runs_of.values()) >= 2, pids                         # reused across configurations


def test_report_of_a_real_sweep(tpe_sweep):
    """``distfair report --sweep`` on what ``distfair sweep`` recorded: the files, one row per
    configuration labelled by its searched params, n = the finished seeds, the chosen row
    marked, the files logged to the sweep run, and MLflow's naming of statistics."""
    root, sweep = tpe_sweep
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep_id, out = sweep["sweep_run_id"], root / "report"
    code = cli.main(["report", "--sweep", sweep_id, "--tracking-uri", uri, "--output-dir", str(out),
                     "--metrics", "robust_acc,val_robust_acc"])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"report.html", "report.md", "tables.csv", "tables.json"}
    doc = json.loads((out / "tables.json").read_text())
    client, by_role = records(root / "mlflow.db")
    configs = {c.info.run_id: c for c in by_role["configuration"]}
    assert [r["run_id"] for r in doc["rows"]] == [t["parent_run_id"] for t in sweep["trials"]]
    for row in doc["rows"]:
        trial = next(t for t in sweep["trials"] if t["parent_run_id"] == row["run_id"])
        # labelled by the params the configurations differ in: exactly the searched ones
        assert set(row["params"]) == {"defense.lambda_sym", "train.lr"}
        assert float(row["params"]["train.lr"]) == pytest.approx(trial["params"]["train.lr"])
        assert row["label"].startswith("defense.lambda_sym=") and "train.lr=" in row["label"]
        finished = [s for s in by_role["seed"] if s.data.tags["mlflow.parentRunId"] == row["run_id"]
                    and s.info.status == "FINISHED"]
        for name, cell in row["cells"].items():
            assert cell["n"] == len(finished) == configs[row["run_id"]].data.metrics["n_seeds"], name
        val = row["cells"]["val_robust_acc"]
        assert val["mean"] == pytest.approx(trial["validation"]["val_robust_acc"]["mean"])
        assert row["chosen_on_validation_by"] == ([sweep_id] if trial["params"] == sweep["best"]["params"] else [])
    assert doc["sweeps"][0]["objective"][0]["stat"] == "mean_minus_std"
    logged = {a.path for a in client.list_artifacts(sweep_id, "report")}
    assert {"report/report.html", "report/report.md", "report/tables.csv", "report/tables.json"} <= logged
    assert not DOTTED.search((out / "report.md").read_text())
    assert not DOTTED.search((out / "tables.csv").read_text())
    assert not DOTTED.search(json.dumps({k: v for k, v in doc.items() if k != "rows"}))


def test_multi_objective_sweep_reports_exactly_the_non_dominated_configurations(tmp_path, tiny_cfg_dict, ray_instance):
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


def test_resume_after_the_driver_was_killed_runs_every_configuration_seed_once(tpe_sweep):
    root, report = tpe_sweep
    _, by_role = records(root / "mlflow.db")
    assert len(by_role["sweep"]) == 1 and len(by_role["configuration"]) == 3
    pairs = Counter((s.data.tags["mlflow.parentRunId"], s.data.tags["distfair.seed"]) for s in by_role["seed"])
    assert len(pairs) == 6 and set(pairs.values()) == {1}          # every (configuration, seed) exactly once
    assert all(r.info.status == "FINISHED" for rs in by_role.values() for r in rs)
    assert len(report["trials"]) == 3


def test_a_sweep_resumed_without_a_tune_snapshot_takes_its_configurations_over_from_the_record(tpe_sweep, tmp_path):
    """A driver killed before Tune's snapshot held its configurations (snapshots come every
    10 s or more and are synced behind; the case behind a fourth configuration run in two
    fresh-clone runs of the suite): the resumed seeded searcher suggests them again, and each
    new trial takes over the earlier record of its parameters. Nothing is trained again, no run
    is added, and the sweep chooses what it chose before."""
    root, report = tpe_sweep
    again = tmp_path / "again"
    shutil.copytree(root, again)
    (tune_dir,) = [d for d in (again / "distfair_runs").iterdir() if (d / "tuner.pkl").exists()]
    for state in [*tune_dir.glob("experiment_state-*"), *tune_dir.glob("search*state-*")]:
        state.unlink()
    _, before = records(again / "mlflow.db")
    resumed = run_sweep_cli(again / "sw.yaml", again, "--resume")
    _, after = records(again / "mlflow.db")
    for role in ("sweep", "configuration", "seed"):
        assert {r.info.run_id for r in after[role]} == {r.info.run_id for r in before[role]}, role
    assert {r.info.run_id: r.info.end_time for r in after["seed"]} == {r.info.run_id: r.info.end_time
                                                                       for r in before["seed"]}
    assert all(r.info.status == "FINISHED" for rs in after.values() for r in rs)
    assert all(c.data.tags["distfair.adopted_from_trial"] != c.data.tags["distfair.trial_id"]
               for c in after["configuration"])
    assert resumed["best"]["params"] == report["best"]["params"]
    assert len(resumed["trials"]) == 3


def test_grid_dimensions_are_crossed_and_early_stopping_leaves_no_open_run(tmp_path, tiny_cfg_dict, ray_instance):
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
    # with early stopping a stopped trial's driver is never reused for the next configuration
    pids = tune_trial_pids(tmp_path)
    assert len(pids) == 4 and len(set().union(*pids.values())) == 4, pids
