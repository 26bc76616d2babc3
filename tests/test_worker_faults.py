"""Faults injected for real into a running ``distfair run`` (issue 15): a Ray Train worker
killed with SIGKILL in the middle of a slot's items, through the worker's fault hook.

The command runs in this process on the session's local Ray instance (one worker group looping
over every seed: the tests' ``max_concurrent_seeds: 1``) and a SQLite MLflow store; the test reads back through
``MlflowClient``. The reference is the plain engine (``distfair.engine.run_seed``) in this
process at one torch thread, what a 1-CPU Ray worker uses (``scripts/bench_overhead.py``):
the same seed gives bit-identical metrics on CPU, so an interrupted run must too.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.distributed.worker import KILL_WORKER_AT

pytestmark = pytest.mark.ray

EXPERIMENT = "faults"


def _seed_runs(client: MlflowClient) -> dict[int, object]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`distfair.role` = 'seed'")
    return {int(r.data.params["seed"]): r for r in runs}


def _epoch_curve(client: MlflowClient, run_id: str, key: str, epochs: int) -> list[tuple[int, float]]:
    """Every point logged at an epoch's step (a final metric of the same name, such as
    ``val_clean_acc``, is logged at step ``epochs``)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step < epochs)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_killed_train_worker_resumes_its_seed_from_the_last_epoch_and_matches_an_uninterrupted_run(
        tmp_path, write_config, tiny_cfg_dict, distfair_cli, monkeypatch):
    cfg = tiny_cfg_dict
    cfg["seeds"] = [0, 1, 2]
    cfg["train"]["epochs"] = 3
    cfg["scaling"]["max_failures"] = 1
    path = write_config(cfg)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.prepare_experiment(uri, EXPERIMENT)       # before two processes open the store (ray.md)
    # the worker kills itself once seed 1's first epoch checkpoint is the one a restart gets
    # (distfair.distributed.worker.KILL_WORKER_AT, read where the seeds are queued): no timing window to hit
    monkeypatch.setenv(KILL_WORKER_AT, "1:1")
    proc = distfair_cli("run", path, "--json", "--tracking-uri", uri, "--experiment", EXPERIMENT, cwd=tmp_path)
    client = MlflowClient(uri)
    stderr = proc.stderr
    assert proc.returncode == 0, stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["seeds"] == [0, 1, 2] and not report.get("errors")

    # one run per seed, each closed FINISHED once; the configuration run too
    after = _seed_runs(client)
    assert sorted(after) == [0, 1, 2] and all(r.info.status == "FINISHED" for r in after.values())
    assert client.get_run(report["parent_run_id"]).info.status == "FINISHED"
    lines = stderr.splitlines()
    assert f"[distfair] test hook {KILL_WORKER_AT}: killing this worker after seed 1's epoch 1 checkpoint" in lines, \
        stderr[-4000:]
    assert ("[distfair] seed 1: worker group restarted (attempt 2), from the seed's last epoch checkpoint"
            in lines), stderr[-4000:]
    assert "[distfair] seed 1: resumed after epoch 1" in lines, stderr[-4000:]
    for seed in (0, 1, 2):            # seed 0 finished before the kill, seed 2 came after: each epoch once
        trained = [line for line in lines if line.startswith(f"[distfair] seed {seed}: epoch ")]
        assert [line.split()[4] for line in trained] == ["1/3", "2/3", "3/3"], trained
    assert not any(line.startswith("[distfair] seed 0: resumed") or line.startswith("[distfair] seed 2: resumed")
                   for line in lines)

    # every seed's epoch curves and final metrics equal those of an uninterrupted run
    from distfair.config import load_config
    from distfair.engine import run_seed

    assert torch.get_num_threads() == 1           # conftest; what a 1-CPU worker runs with
    resolved = load_config(path)
    for seed in (0, 1, 2):
        expected = run_seed(resolved, seed, workdir=tmp_path / "reference" / f"seed{seed}")
        run = after[seed]
        for key in ("train_loss", "val_clean_acc", "val_robust_acc", "val_sym"):
            assert _epoch_curve(client, run.info.run_id, key, 3) == [(h["epoch"], h[key]) for h in expected.history], \
                (seed, key)            # each epoch once, with the uninterrupted run's value
        final = {k: v for k, v in expected.metrics.items() if v is not None and not k.endswith("time_s")}
        logged = run.data.metrics
        different = {k: (logged.get(k), v) for k, v in final.items() if k not in logged or not _same(logged[k], v)}
        assert not different, (seed, different)
