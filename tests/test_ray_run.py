"""End to end on a real local Ray instance and a real SQLite MLflow store."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.config import validate
from distfair.distributed import run_configuration

pytestmark = pytest.mark.ray


def _children(client: MlflowClient, exp_id: str, parent: str):
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_cli_run_records_parent_and_one_child_per_seed(tmp_path, write_config, tiny_cfg_dict):
    """The real command in its own process: starts and stops its own local Ray instance."""
    tiny_cfg_dict["seeds"] = [0, 1, 2]
    path = write_config(tiny_cfg_dict)
    uri = "sqlite:///mlflow.db"                       # relative: resolved against the working directory
    proc = subprocess.run([sys.executable, "-m", "distfair.cli", "run", str(path), "--json", "--tracking-uri", uri,
                           "--experiment", "itest", "--num-cpus", "2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)                                      # stdout is exactly one JSON object
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "distfair_runs").is_dir()                  # default Ray Train storage, here
    assert report["experiment"] == "itest" and report["seeds"] == [0, 1, 2]
    assert "Mean ± std across seeds" in err and "mlflow ui --backend-store-uri" in err

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
    for name in ("robust_acc", "clean_acc", "worst_class_acc", "sym_loss", "fgsm/robust_acc", "train_loss"):
        values = np.array([c.data.metrics[name] for c in children])
        assert pm[f"{name}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert pm[f"{name}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert pm[f"{name}_min"] == pytest.approx(values.min()) and pm[f"{name}_max"] == pytest.approx(values.max())
        assert sorted(report["metrics"][name]["values"]) == pytest.approx(sorted(values))
    # every metric a child reports has its statistics in the parent
    assert {f"{k}_mean" for c in children for k in c.data.metrics} <= set(pm)
    assert parent.data.params["train.lr"] == "0.05" and parent.data.params["defense.name"] == "syfar"

    child = children[0]
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1]                 # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"confusion_matrices.json", "per_class_acc.json", "plots", "checkpoint"} <= artifacts
    plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert plots == {"plots/confusion_clean.png", "plots/confusion_pgd5.png", "plots/confusion_fgsm.png"}
    local = client.download_artifacts(child.info.run_id, "confusion_matrices.json", str(tmp_path))
    matrices = json.load(open(local))["matrices"]
    assert set(matrices) == {"clean", "pgd5", "fgsm"}


def test_ddp_keeps_parameters_identical_on_all_ranks(ray_local, tmp_path, tiny_cfg_dict):
    tiny_cfg_dict["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 1}}
    tiny_cfg_dict["seeds"] = [0]
    cfg = validate(tiny_cfg_dict, "ddp.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.prepare_experiment(uri, "ddp")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="ddp")
    child = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    outcome = run_configuration(cfg, seeds=[0], tracking_uri=uri, child_run_ids={0: child},
                                run_name="ddp-test", storage_path=str(tmp_path / "storage"), log=print)
    assert outcome.ok, outcome.errors
    prints = outcome.results[0]["param_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    # every test sample counted exactly once although evaluation was sharded over 2 ranks
    n = sum(map(sum, outcome.results[0]["confusion"]["clean"]))
    assert n == 30          # 120 synthetic samples, test_fraction 0.25
