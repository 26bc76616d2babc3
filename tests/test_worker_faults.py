"""Faults injected for real into a running ``distfair run`` (issue 15): a Ray Train worker
killed with SIGKILL in the middle of a seed group.

The command runs in its own process with its own local Ray instance (``--num-cpus 1``: one
worker group looping over every seed) and a SQLite MLflow store; the test reads back through
``MlflowClient``. The reference is the plain engine (``distfair.engine.run_seed``) in this
process at one torch thread, what a 1-CPU Ray worker uses (``scripts/bench_overhead.py``):
the same seed gives bit-identical metrics on CPU, so an interrupted run must too.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import stop_process_group
from distfair import tracking

pytestmark = pytest.mark.ray

EXPERIMENT = "faults"


def _seed_runs(client: MlflowClient) -> dict[int, object]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`distfair.role` = 'seed'")
    return {int(r.data.params["seed"]): r for r in runs}


def _latest_checkpoint(storage: Path) -> dict | None:
    """The metrics of the checkpoint Ray Train would resume the group from: its checkpoint
    manager's snapshot (``checkpoint_manager_snapshot.json`` in the run's storage folder,
    rewritten each time the controller registers a reported checkpoint). A checkpoint a worker
    has written but the controller not yet registered is not what a restart gets."""
    for path in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(path.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):          # being rewritten right now
            continue
        if latest:
            return latest["metrics"]
    return None


def _train_workers(pid: int) -> list[psutil.Process]:
    """The Ray Train workers among the descendants of the command (its own Ray instance's
    raylet starts them), never another test's."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("ray::RayTrainWorker"):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _epoch_curve(client: MlflowClient, run_id: str, key: str, epochs: int) -> list[tuple[int, float]]:
    """Every point logged at an epoch's step (a final metric of the same name, such as
    ``val_clean_acc``, is logged at step ``epochs``)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step < epochs)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_killed_train_worker_resumes_its_seed_from_the_last_epoch_and_matches_an_uninterrupted_run(
        tmp_path, write_config, tiny_cfg_dict):
    cfg = tiny_cfg_dict
    cfg["seeds"] = [0, 1, 2]
    cfg["train"]["epochs"] = 3
    # one to two seconds an epoch: long enough that the kill lands inside seed 1's second epoch
    cfg["dataset"]["num_samples"] = 3600
    cfg["attack"]["steps"] = 5
    cfg["scaling"]["max_failures"] = 1
    path = write_config(cfg)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.prepare_experiment(uri, EXPERIMENT)       # before two processes open the store (ray.md)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", str(path), "--json", "--tracking-uri",
                                 uri, "--experiment", EXPERIMENT, "--num-cpus", "1"], cwd=tmp_path, stdout=o,
                                stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(uri)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 300
        before, workers = None, None
        while True:                 # until seed 1's first epoch checkpoint is the one a restart gets
            latest = _latest_checkpoint(tmp_path / "distfair_runs")
            if latest and latest.get("seed") == 1 and latest.get("epoch") == 0 and before is not None:
                break
            if before is None and latest and latest.get("seed_done"):
                # seed 0 is done: read what the kill must not change now, so that the kill itself
                # follows the registration of seed 1's checkpoint at once (the next epoch's
                # checkpoint is not registered yet: that epoch would be trained again)
                before, workers = _seed_runs(client), _train_workers(proc.pid)
            missed = latest and (latest["seed"] > 1 or latest["seed"] == 1 and (                 # polled too late
                latest.get("seed_done") or latest.get("epoch", 0) > 0))
            if proc.poll() is not None or time.monotonic() > deadline or missed:
                pytest.fail(f"never saw seed 1 after its first epoch (last checkpoint {latest}, exit {proc.poll()})"
                            f":\n{err.read_text()[-3000:]}")
            time.sleep(0.05)
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=400)
        print(f"killed after {killed - started:.0f} s, the command ended {time.monotonic() - killed:.0f} s later")
    finally:
        stop_process_group(proc)
    stderr = err.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1, 2] and not report.get("errors")

    # seed 0 had finished before the kill: the same run, closed once, never retrained
    assert before[0].info.status == "FINISHED" and before[1].info.status == "RUNNING"
    after = _seed_runs(client)
    assert {s: r.info.run_id for s, r in after.items()} == {s: r.info.run_id for s, r in before.items()}
    assert after[0].info.end_time == before[0].info.end_time
    assert all(r.info.status == "FINISHED" for r in after.values())
    assert client.get_run(report["parent_run_id"]).info.status == "FINISHED"
    lines = stderr.splitlines()
    assert "[distfair] resuming group: seeds [0] already done" in lines, stderr[-4000:]
    assert "[distfair] seed 1: resumed after epoch 1" in lines, stderr[-4000:]
    for seed in (0, 2):
        trained = [line for line in lines if line.startswith(f"[distfair] seed {seed}: epoch ")]
        assert [line.split()[4] for line in trained] == ["1/3", "2/3", "3/3"], trained   # each epoch once
    # seed 1 resumed after its first epoch. Its second may show twice: the worker can finish and
    # print it in the moment between the registration of the first epoch's checkpoint and the
    # SIGKILL, and then it really is trained again; MLflow still has each epoch once (below)
    trained = [line.split()[4] for line in lines if line.startswith("[distfair] seed 1: epoch ")]
    assert trained in (["1/3", "2/3", "3/3"], ["1/3", "2/3", "2/3", "3/3"]), trained
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
