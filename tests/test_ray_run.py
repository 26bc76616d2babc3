"""The real command, end to end, in its own process: its own local Ray instance, a real
SQLite MLflow store, read back through MLflow's client."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import yaml
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from distfair import tracking
from distfair.results import record


pytestmark = pytest.mark.ray


def _children(client: MlflowClient, exp_id: str, parent: str):
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.fixture(scope="module")
def itest_run(tmp_path_factory):
    """The real command in its own process (its own local Ray instance), 3 seeds with their
    figures: (folder, finished process). The fine-tuning test starts from its seeds."""
    import copy

    root = tmp_path_factory.mktemp("itest")
    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = [0, 1, 2]
    cfg["eval"]["attacks"].append({"name": "every", "attack": "fgsm", "target": "every"})
    cfg["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    uri = "sqlite:///mlflow.db"                       # relative: resolved against the working directory
    proc = subprocess.run([sys.executable, "-m", "distfair.cli", "run", str(path), "--json", "--tracking-uri", uri,
                           "--experiment", "itest", "--num-cpus", "2"], cwd=root, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "DISTFAIR_SEED_FIGURES": "1"})
    return root, proc


def test_cli_run_records_parent_and_one_child_per_seed(itest_run):
    """The real command in its own process: starts and stops its own local Ray instance."""
    tmp_path, proc = itest_run
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)                                      # stdout is exactly one JSON object
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "distfair_runs").is_dir()                  # default Ray Train storage, here
    assert report["experiment"] == "itest" and report["seeds"] == [0, 1, 2]
    assert "Mean ± std across seeds" in err and "mlflow ui --backend-store-uri" in err
    # issue 14: the driver is the only writer; each seed's progress once and in order; Ray's,
    # Tune's and the workers' own output in the log file it names
    lines = err.splitlines()
    for seed in (0, 1, 2):
        mine = [line for line in lines if line.startswith(f"[distfair] seed {seed}: ")]
        assert [re.match(r"\[distfair\] seed \d+: (epoch \d+/\d+|evaluated \S+)", line)[1] for line in mine] == [
            "epoch 1/2", "epoch 2/2", "evaluated pgd5", "evaluated fgsm", "evaluated every"], mine
    for noise in ("[repeated", "\x1b[", "core_worker.cc", "pid=", "Traceback", "tensorboard", "INFO"):
        assert noise not in err, noise
    log_file = next(line.split(": ", 1)[1] for line in lines if line.startswith("[distfair] Ray, Tune and worker output: "))
    logged = open(log_file).read()
    assert os.path.dirname(log_file) == str(tmp_path / "distfair_runs" / "logs")
    assert "(RayTrainWorker pid=" in logged and "[distfair] seed 2: epoch 2/2" in logged and "\x1b[" not in logged

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("itest")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == report["parent_run_id"]
    parent = parents[0]
    children = _children(client, exp.experiment_id, parent.info.run_id)
    assert len(runs) == 4 and sorted(int(c.data.params["seed"]) for c in children) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" for r in runs)

    # the parent's statistics are numpy over the children
    pm = parent.data.metrics
    assert pm["n_seeds"] == 3
    for name in ("robust_acc", "clean_acc", "worst_class_acc", "sym_loss", "fgsm/robust_acc", "train_loss",
                 "group_gap/half", "every/max_bipartition_asym", "clean_group_acc/half/b"):
        values = np.array([c.data.metrics[name] for c in children])
        assert pm[f"{name}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert pm[f"{name}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert pm[f"{name}_min"] == pytest.approx(values.min()) and pm[f"{name}_max"] == pytest.approx(values.max())
        assert sorted(report["metrics"][name]["values"]) == pytest.approx(sorted(values))
    # every metric a child reports has its statistics in the parent
    assert {f"{k}_mean" for c in children for k in c.data.metrics} <= set(pm)
    assert parent.data.params["train.lr"] == "0.05" and parent.data.params["defense.name"] == "syfar"
    # issues 13/14: the seed-stability figure and the summary table on the parent, its resolved
    # config, a model-training experiment, and seed runs that carry their configuration's identity
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {"plots/seed_stability.png"}
    note = parent.data.tags["mlflow.note.content"]
    assert "| robust_acc (pgd5) | " in note and "| group_gap/half (pgd5) | " in note and "plots/seed_stability.png" in note
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(c.data.tags["distfair.config_hash"] == parent.data.tags["distfair.config_hash"]
               and c.data.params["train.lr"] == "0.05" for c in children)

    child = children[0]
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1]                 # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"confusion_matrices.json", "per_class_acc.json", "subgroups.json", "target_success.json",
            "self_checks.json", "robust_flags.npz", "plots", "checkpoint"} <= artifacts
    evaluations = ("clean", "pgd5", "fgsm", "every")
    plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert plots == {f"plots/{kind}_{e}.png" for kind in ("confusion", "asymmetry", "target_shares")
                     for e in evaluations} | {"plots/per_class_acc.png", "plots/groups_half.png",
                                              "plots/target_success_every.png"}
    local = client.download_artifacts(child.info.run_id, "confusion_matrices.json", str(tmp_path))
    matrices = json.load(open(local))["matrices"]
    assert set(matrices) == set(evaluations)
    # per-sample flags agree with the logged accuracies; the self-checks left their tag
    flags = np.load(client.download_artifacts(child.info.run_id, "robust_flags.npz", str(tmp_path)))
    assert flags["pgd5"].mean() == pytest.approx(child.data.metrics["robust_acc"])
    assert flags["every"].mean() == pytest.approx(child.data.metrics["every/robust_acc"])
    assert "distfair.checks" in child.data.tags
    subgroups = json.load(open(client.download_artifacts(child.info.run_id, "subgroups.json", str(tmp_path))))
    assert subgroups["pgd5"]["attributes"]["half"]["classes"] == {"a": ["0", "1"], "b": ["2"]}
    assert subgroups["pgd5"]["max_bipartition_asym"]["value"] == pytest.approx(
        child.data.metrics["max_bipartition_asym"])


def test_shipped_quickstart_runs_end_to_end(tmp_path, distfair_cli):
    """The README's main command, exactly as shipped (real digits, Sy-FAR, 3 seeds), called in
    this process (the command in a process of its own: ``itest_run``)."""
    import time
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "tune_spaces" / "quickstart.yaml"
    start = time.perf_counter()
    proc = distfair_cli("run", config, "--json", cwd=tmp_path)
    print(f"quickstart took {time.perf_counter() - start:.1f}s")       # measured, never asserted
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["seeds"] == [0, 1, 2]
    m = report["metrics"]
    # a real robust model, not a collapsed one: well above chance (0.1) on 10 classes
    assert m["clean_acc"]["min"] > 0.8 and m["robust_acc"]["min"] > 0.5
    assert m["robust_acc"]["max"] <= m["clean_acc"]["max"]
    assert (tmp_path / "mlflow.db").exists()
    assert "mlflow ui --backend-store-uri" in proc.stderr

    # issue 10 part 5: every seed run's result record loads with json alone and lists every
    # metric MLflow shows; the configuration record's statistics are the parent's
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(report["parent_run_id"])
    children = _children(client, parent.info.experiment_id, parent.info.run_id)
    assert len(children) == 3
    for child in children:
        with open(client.download_artifacts(child.info.run_id, "result.json", str(tmp_path / child.info.run_id))) as f:
            doc = json.load(f)
        assert doc["schema_version"] == record.SCHEMA_VERSION and doc["seed"] == int(child.data.params["seed"])
        logged = [r for r in doc["values"] if r["value"] is not None]
        assert {k for r in logged for k in [r["mlflow_key"], *r["mlflow_aliases"]]} == set(child.data.metrics)
        for r in logged:
            if r["step"] == doc["values"][-1]["step"] and r["epoch"] is None:     # final values
                assert child.data.metrics[r["mlflow_key"]] == r["value"], r
    with open(client.download_artifacts(parent.info.run_id, "configuration_result.json", str(tmp_path))) as f:
        config_doc = json.load(f)
    assert config_doc["seeds"] == [0, 1, 2]
    for entry in config_doc["entries"]:
        if entry["parent_summary"] and entry["mean"] is not None:
            assert parent.data.metrics[f"{entry['mlflow_key']}_mean"] == pytest.approx(entry["mean"]), entry


def _statuses(db) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("itest")
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])} if exp else {}


def _interruptible() -> None:
    """In the child before exec: SIGINT as a user's terminal delivers it (default disposition,
    unblocked). A child inherits both from this pytest process, which earlier tests may have
    changed (a Python started with SIGINT ignored installs no KeyboardInterrupt handler): in the
    full suite under CI the command once trained on after Ctrl-C, alone it never did."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_marks_every_run_killed_and_exits_promptly(tmp_path, write_config, tiny_cfg_dict):
    import signal
    import time

    tiny_cfg_dict["train"]["epochs"] = 500                      # long enough to be interrupted
    path = write_config(tiny_cfg_dict)
    db = tmp_path / "mlflow.db"
    # Create the store before two processes open it: concurrent creation of a fresh SQLite
    # store races on its schema migration (ray.md), and this test polls it while the CLI runs.
    tracking.prepare_experiment(f"sqlite:///{db}", "itest")
    proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", str(path), "--experiment", "itest"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:                          # wait until a seed has logged an epoch
        time.sleep(2)
        client = MlflowClient(f"sqlite:///{db}") if db.exists() else None
        exp = client.get_experiment_by_name("itest") if client else None
        if exp and any("train_loss" in r.data.metrics for r in client.search_runs([exp.experiment_id])):
            break
    else:
        proc.kill()
        pytest.fail("no epoch was logged in time")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:       # say where it hung (the command's own last lines)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit within 120 s of Ctrl-C; stdout tail:\n{out[-1500:]}\nstderr tail:\n{err[-3000:]}")
    assert proc.returncode == 130, err[-2000:]
    assert "marked KILLED" in err
    statuses = _statuses(db)
    assert len(statuses) == 3 and set(statuses.values()) == {"KILLED"}, statuses


def test_a_failing_run_is_reported_and_left_failed_not_running(tmp_path, write_config, tiny_cfg_dict, distfair_cli):
    tiny_cfg_dict["train"]["lr"] = 1e12                          # diverges: non-finite loss in epoch 1
    tiny_cfg_dict["seeds"] = [0]
    path = write_config(tiny_cfg_dict)
    proc = distfair_cli("run", path, "--experiment", "itest", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert re.search(r"seed 0 FAILED: loss is (nan|-?inf) at epoch 1, batch \d+", proc.stdout), proc.stdout[-2000:]
    statuses = _statuses(tmp_path / "mlflow.db")
    assert set(statuses.values()) == {"FAILED"}, statuses


def test_fine_tuning_from_a_configuration_run_uses_each_seeds_own_checkpoint(itest_run, tmp_path, write_config,
                                                                             tiny_cfg_dict, distfair_cli):
    """Fine-tunes seeds 0 and 1 of the 3-seed run of ``itest_run`` (same store, own folder)."""
    root, first = itest_run
    assert first.returncode == 0, first.stderr[-2000:]
    parent = json.loads(first.stdout)["parent_run_id"]
    tiny_cfg_dict["defense"] = {"name": "faal"}
    tiny_cfg_dict["train"]["init_from"] = parent
    path = write_config(tiny_cfg_dict, "finetune.yaml")
    second = distfair_cli("run", path, "--experiment", "ft", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
                          cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    out = second.stdout + second.stderr
    for seed in (0, 1):
        assert f"seed {seed}: initialised from" in out
    downloaded = sorted((tmp_path / "distfair_runs" / "init_from").glob("*/last.pt"))
    assert len(downloaded) == 2                                  # one checkpoint per seed run
