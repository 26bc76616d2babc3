"""The tracking server goes away in the middle of a `distfair run` (issue 15).

A real ``mlflow server`` (its own SQLite file and artifact folder, HTTP only, a process of its
own) is stopped (SIGTERM, then SIGKILL, to its process group) once the first epoch metric of
a real ``distfair run`` (called in the test's process on a thread, on the session's Ray
instance) is in its store. Down for :data:`OUTAGE_S` and restarted on the same port over the
same store (long enough for the writes to fail and be retried several times, and the end of
each seed to wait for the server), nothing is lost and the output says so; never restarted (a 5 s retry budget), the
run exits 1 naming the folder that keeps the results and the ``distfair relog`` command, which,
run once a server is back, completes the record.

The buffer's bound and its spill to disk are unit-tested without a server.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY, call_cli, stop_process_group
from distfair.distributed.worker import KILL_WORKER_AT
from distfair.tracking import buffer as tracking_buffer
from distfair.tracking.buffer import WriteBuffer

EPOCHS = 12
SEEDS = [0, 1]
#: how long the server stays down: past three failed tries (1 s, 2 s, 4 s apart); the doubling up
#: to its cap is unit-tested below (a 30 s outage took 25 s more of the suite for no other check)
OUTAGE_S = 10
#: what every seed run must hold at the end: an epoch metric at every step, final metrics,
#: the result record, figures and checkpoint
EPOCH_METRIC, FINAL_METRIC = "epoch_time_s", "clean_acc"
CLEAN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
             "RAY_ADDRESS", tracking_buffer.RETRY_ENV, tracking_buffer.BUFFER_ENV)


# ------------------------------------------------------------------------------ unit: the buffer
def test_buffer_keeps_at_most_its_limit_in_memory_and_spills_the_rest_in_order(tmp_path):
    buffer = WriteBuffer(tmp_path / "run", limit=3)
    for i in range(10):
        buffer.append({"op": "batch", "metrics": [["m", float(i), 0, i]]})
    assert len(buffer) == 10 and len(buffer.memory) == 3
    spilled = (tmp_path / "run" / tracking_buffer.SPILL).read_text().splitlines()
    assert [json.loads(line)["metrics"][0][3] for line in spilled] == list(range(3, 10))
    out = []
    while len(buffer):
        assert len(buffer.memory) <= 3
        out.append(buffer.pop()["metrics"][0][3])
        if len(out) == 4:               # a write arriving while the spill is drained goes after it
            buffer.append({"op": "batch", "metrics": [["m", 10.0, 0, 10]]})
    assert out == list(range(11))
    assert not (tmp_path / "run" / tracking_buffer.SPILL).exists()


def test_a_waiting_artifact_is_copied_before_its_temporary_file_goes_and_parks_with_the_rest(tmp_path):
    source = tmp_path / "tmp"
    (source / "plots").mkdir(parents=True)
    (source / "result.json").write_text('{"seed": 0}')
    (source / "plots" / "a.png").write_bytes(b"png")
    buffer = WriteBuffer(tmp_path / "unlogged" / "run1", limit=2)
    buffer.append({"op": "artifact", "file": str(source / "result.json"), "artifact_path": None})
    buffer.append({"op": "artifacts", "file": str(source / "plots"), "artifact_path": "plots"})
    buffer.append({"op": "status", "status": "FINISHED"})          # spilled (limit 2)
    buffer.stash_files()                                             # what a failed write does
    (source / "result.json").unlink()
    (source / "plots" / "a.png").unlink()
    folder = buffer.park({"run_id": "run1", "tracking_uri": "http://x", "reason": "down"})
    assert len(buffer) == 0 and tracking_buffer.parked_folders(folder.parent) == [folder]
    info, ops, done = tracking_buffer.read_parked(folder)
    assert info["run_id"] == "run1" and done == 0
    assert [op["op"] for op in ops] == ["artifact", "artifacts", "status"]
    assert tracking_buffer.parked_file(folder, ops[0]).read_text() == '{"seed": 0}'
    assert (tracking_buffer.parked_file(folder, ops[1]) / "a.png").read_bytes() == b"png"
    tracking_buffer.mark_replayed(folder, 2)
    assert tracking_buffer.read_parked(folder)[2] == 2


def test_copies_are_dropped_once_flushed_but_a_parked_folder_stays(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    buffer = WriteBuffer(tmp_path / "run", limit=5)
    buffer.append({"op": "artifact", "file": str(tmp_path / "f.txt")})
    buffer.stash_files()
    buffer.pop()
    buffer.discard_copies()
    assert not (tmp_path / "run").exists()
    buffer.append({"op": "status", "status": "FINISHED"})
    buffer.park({"run_id": "run"})
    WriteBuffer(tmp_path / "run", limit=5).discard_copies()
    assert (tmp_path / "run" / tracking_buffer.PENDING).exists()


def test_a_journal_holds_every_pending_write_in_order_and_a_new_buffer_takes_it_over(tmp_path):
    """What a worker killed during an outage leaves: the journal written before its last epoch
    checkpoint, and a spill file with later writes. The restarted worker's buffer takes the
    journal, in order, with its file copies, and drops the spill (those epochs are trained
    again); once logged, the journal and copies go."""
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    folder = tmp_path / "unlogged" / "run1"
    dead = WriteBuffer(folder, limit=2)
    for step in range(3):                                   # the third spills
        dead.append({"op": "batch", "metrics": [["epoch_time_s", 1.0, 0, step]]})
    dead.append({"op": "artifact", "file": str(tmp_path / "ckpt.pt"), "artifact_path": "checkpoint"})
    dead.write_journal()
    dead.append({"op": "batch", "metrics": [["epoch_time_s", 1.0, 0, 3]]})      # after the checkpoint
    (tmp_path / "ckpt.pt").unlink()                         # a temporary file of the dead worker
    assert (folder / tracking_buffer.SPILL).exists() and not list(folder.glob("*.partial"))

    restarted = WriteBuffer(folder, limit=2)
    ops = restarted.take_journal()
    assert len(ops) == 4 and len(restarted) == 4
    out = [restarted.pop() for _ in range(4)]
    assert [op["metrics"][0][3] for op in out[:3]] == [0, 1, 2] and out[3]["op"] == "artifact"
    assert tracking_buffer.parked_file(folder, out[3]).read_bytes() == b"weights"
    restarted.discard_copies()
    assert not folder.exists()                              # journal, spill and copies gone

    empty = WriteBuffer(tmp_path / "unlogged" / "run2", limit=2)
    empty.write_journal()                                   # nothing pending: no journal
    assert not (tmp_path / "unlogged" / "run2").exists() and empty.take_journal() == []


def test_a_restarted_seed_logger_replays_the_journal_and_skips_its_epochs(tmp_path):
    """Two SeedRunLoggers of one run while its server is away (a closed port): the first
    journals epochs 0 and 1 at its checkpoint, buffers epoch 2 and dies; the second (the
    restarted worker, resuming after epoch 1) holds epochs 0, 1 from the journal, does not queue
    epoch 1 again, and queues its own epoch 2 once."""
    from distfair.tracking.seed_logger import SeedRunLogger

    uri, lines = f"http://127.0.0.1:{_free_port()}", []
    make = lambda: SeedRunLogger(uri, "run1", storage_path=tmp_path, retry_s=0.2,  # noqa: E731
                                 buffer_limit=1000, log=lines.append, figures=False)
    first = make()
    for epoch in (0, 1):
        first.log_epoch(epoch, {"epoch_time_s": 1.0, "loss": 0.5})
    first.journal()
    first.log_epoch(2, {"epoch_time_s": 1.0, "loss": 0.4})
    second = make()
    assert any("replayed from its journal" in line for line in lines), lines
    second.log_epoch(1, {"epoch_time_s": 1.0, "loss": 0.5})
    second.log_epoch(2, {"epoch_time_s": 1.0, "loss": 0.4})
    steps = []
    while len(second.buffer):
        steps += sorted({m[3] for m in second.buffer.pop().get("metrics", ())})
    assert steps == [0, 1, 2]


def test_retry_settings_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(tracking_buffer.RETRY_ENV, raising=False)
    assert tracking_buffer.retry_budget_s() == tracking_buffer.DEFAULT_RETRY_S >= 120
    monkeypatch.setenv(tracking_buffer.RETRY_ENV, "7.5")
    monkeypatch.setenv(tracking_buffer.BUFFER_ENV, "20")
    assert tracking_buffer.retry_budget_s() == 7.5 and tracking_buffer.buffer_limit() == 20
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(tracking_buffer.RETRY_ENV, bad)
        with pytest.raises(ValueError, match=tracking_buffer.RETRY_ENV):
            tracking_buffer.retry_budget_s()


def test_backoff_doubles_up_to_its_cap_and_reports_the_outage_once():
    backoff = tracking_buffer.Backoff()
    assert backoff.failed(100.0) and not backoff.failed(101.0) and not backoff.failed(103.0)
    assert backoff.next_try == 107.0 and backoff.elapsed(110.0) == 10.0
    for t in range(20):
        backoff.failed(110.0 + t)
    assert backoff.delay == tracking_buffer.MAX_DELAY_S
    assert backoff.recovered() is not None and backoff.recovered() is None and backoff.elapsed(200.0) == 0.0


# ------------------------------------------------------------------------ a real server, stopped
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on a fixed port over one store; stopped and started again at will."""

    def __init__(self, store: Path):
        self.store, self.port = store, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = store.parent / f"{store.name}-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", f"sqlite:///{self.store}/server.db",
                 "--artifacts-destination", str(self.store / "artifacts")],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 240
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health in 240 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace_s=2)
            self.proc = None


class _Command:
    """``distfair run`` called in this process (:func:`conftest.call_cli`, the session's Ray
    instance) on a thread of its own, so that the test can stop the server meanwhile."""

    def __init__(self, *argv, cwd: Path):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(argv, cwd), daemon=True)
        self.thread.start()

    def _run(self, argv, cwd) -> None:
        self.result = call_cli(*argv, cwd=cwd)

    def poll(self) -> int | None:
        return None if self.thread.is_alive() or self.result is None else self.result.returncode

    def wait(self, timeout: float) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            pytest.fail(f"the command did not end within {timeout} s")
        return self.result.returncode

    def output(self) -> str:
        return "" if self.result is None else self.result.stdout + self.result.stderr


def _start_run(tmp_path: Path, name: str, uri: str, monkeypatch, **env_extra: str) -> tuple[_Command, Path]:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"]["epochs"] = EPOCHS
    cfg["seeds"] = SEEDS
    cfg["scaling"]["max_failures"] = 1          # a killed worker's group is restarted once
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    storage = tmp_path / "storage"
    for key in CLEAN_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env_extra.items():            # read by the driver (retry budget, buffer)
        monkeypatch.setenv(key, value)
    return _Command("run", config, "--tracking-uri", uri, "--storage-path", storage, cwd=tmp_path), storage


def _stop_at_first_epoch(server: Server, proc: _Command, experiment: str) -> None:
    """Stop the server as soon as an epoch metric of the run is in its store."""
    client = MlflowClient(server.uri)
    deadline = time.monotonic() + 300
    while True:
        found = client.get_experiment_by_name(experiment)
        if found and any(EPOCH_METRIC in r.data.metrics for r in client.search_runs([found.experiment_id])):
            server.stop()
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no epoch metric before the run ended ({proc.poll()}):\n{proc.output()[-4000:]}")
        time.sleep(0.3)


def _assert_complete_seed_runs(uri: str, experiment: str) -> list:
    """Every seed run FINISHED with every epoch, the final metrics, params and artifacts;
    returns every run of the experiment."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    seeds = [r for r in runs if r.data.tags.get("distfair.role") == "seed"]
    assert sorted(int(r.data.tags["distfair.seed"]) for r in seeds) == SEEDS
    for run in seeds:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED", run.info
        steps = sorted(m.step for m in client.get_metric_history(run_id, EPOCH_METRIC))
        assert steps == list(range(EPOCHS)), steps               # no epoch missing, none twice
        assert FINAL_METRIC in run.data.metrics and run.data.params["seed"] == run.data.tags["distfair.seed"]
        assert run.data.tags["distfair.checks"]
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"result.json", "per_class_acc.json", "confusion_matrices.json", "plots", "checkpoint",
                "config.yaml"} <= top, top
        assert client.list_artifacts(run_id, "plots") and client.list_artifacts(run_id, "checkpoint")
    return runs


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One store and port for the module (each test its own experiment): a server start costs
    seconds, and each test stops it anyway."""
    store = tmp_path_factory.mktemp("store")
    server = Server(store)
    yield server
    server.stop()


@pytest.fixture
def server(module_server):
    if module_server.proc is None:
        module_server.start()
    return module_server


@pytest.mark.ray
def test_an_outage_of_the_tracking_server_loses_nothing_and_is_reported(tmp_path, server, seed_figures,
                                                                          ray_instance, monkeypatch):
    # seed 0's worker dies during the outage, once its epoch 6 checkpoint is registered, with the
    # epochs' writes buffered: the restarted worker resumes after epoch 6 and replays them from
    # the journal (without it, epochs 1-6 of seed 0 would be missing)
    monkeypatch.setenv(KILL_WORKER_AT, "0:6:outage")
    proc, storage = _start_run(tmp_path, "outage", server.uri, monkeypatch)
    _stop_at_first_epoch(server, proc, "outage")
    time.sleep(OUTAGE_S)
    server.start()                                        # same port, same store
    rc = proc.wait(600)
    text = proc.output()
    assert rc == 0, text[-5000:]
    assert re.search(r"tracking server http://127\.0\.0\.1:\d+ unreachable", text), text[-5000:]
    assert re.search(r"tracking server http://127\.0\.0\.1:\d+ back after \d+ s", text), text[-5000:]
    assert f"test hook {KILL_WORKER_AT}: killing this worker after seed 0's epoch 6 checkpoint" in text, text[-5000:]
    assert "seed 0: resumed after epoch 6" in text, text[-5000:]
    runs = _assert_complete_seed_runs(server.uri, "outage")        # epochs 1-6 of seed 0 included
    assert "replayed from its journal" in text, text[-5000:]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags.get("distfair.role") == "configuration")
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_seeds"] == len(SEEDS)
    assert f"{FINAL_METRIC}_mean" in parent.data.metrics
    assert not (storage / tracking_buffer.UNLOGGED).exists() or not any((storage / tracking_buffer.UNLOGGED).iterdir())


@pytest.mark.ray
def test_a_server_that_never_returns_fails_the_run_and_relog_completes_it_later(tmp_path, server, seed_figures,
                                                                                ray_instance, monkeypatch):
    proc, storage = _start_run(tmp_path, "gone", server.uri, monkeypatch, **{tracking_buffer.RETRY_ENV: "5"})
    _stop_at_first_epoch(server, proc, "gone")
    rc = proc.wait(600)
    text = proc.output()
    assert rc == 1, text[-5000:]
    error = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "unreachable" in error[0], text[-5000:]
    found = re.search(r"log them with: (distfair relog .+)$", error[0])
    assert found, error[0]
    command = shlex.split(found.group(1))
    unlogged = storage / tracking_buffer.UNLOGGED
    assert command[2] == str(unlogged) and command[3:] == ["--tracking-uri", server.uri]
    # the results are on disk: per seed run every final write with its files, the status last
    folders = tracking_buffer.parked_folders(unlogged)
    seed_folders = []
    for folder in folders:
        info, ops, _ = tracking_buffer.read_parked(folder)
        if any(op["op"] == "status" for op in ops):
            seed_folders.append(folder)
            files = {Path(op["file"]).name for op in ops if op.get("file")}
            assert {"result.json", "plots", "last.pt"} <= files, files
            assert all(tracking_buffer.parked_file(folder, op).exists() for op in ops if op.get("file"))
            record = next(tracking_buffer.parked_file(folder, op) for op in ops
                          if op.get("file", "").endswith("result.json"))
            assert json.loads(record.read_text())["seed"] in SEEDS
    # the seeds still training when the server went (at least the one whose epoch was seen),
    # and a closing FAILED for the parent and every seed run
    assert seed_folders and len(folders) == len(SEEDS) + 1

    server.start()                                     # the same store, the URI the command names
    monkeypatch.delenv(tracking_buffer.RETRY_ENV)
    done = call_cli(*command[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = _assert_complete_seed_runs(server.uri, "gone")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags.get("distfair.role") == "configuration")
    assert parent.info.status == "FAILED" and "unreachable" in parent.data.tags["distfair.closed_because"]
    assert not tracking_buffer.parked_folders(unlogged)
    again = call_cli(*command[1:], cwd=tmp_path)
    assert again.returncode == 2 and "no results waiting" in again.stderr


def test_a_command_whose_server_stays_away_says_so_in_one_line(monkeypatch, capsys):
    """Any command (here `distfair analyze`): the retry budget, then exit 1 with one line."""
    from distfair import cli

    monkeypatch.setenv(tracking_buffer.RETRY_ENV, "1")
    uri = f"http://127.0.0.1:{_free_port()}"                  # nothing listens there
    assert cli.main(["analyze", "--experiment", "x", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert f"tracking server {uri} unreachable" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: tracking server {uri} unreachable for ")


def test_a_seed_logger_whose_server_is_away_buffers_spills_parks_and_relog_logs_it(tmp_path):
    """No server at all (a closed port), a 1 s budget: the logger still opens (a seed is
    trained anyway), keeps 2 writes in memory and spills the rest, and gives up naming the
    folder and the command; `distfair relog` then logs every epoch into a store that has the run."""
    from distfair import cli, tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.prepare_experiment(store, "offline")
    run_id = tracking.get_or_create_seed_run(store, experiment, "parent", 0)
    away = f"http://127.0.0.1:{_free_port()}"
    lines: list[str] = []
    logger = tracking.SeedRunLogger(away, run_id, storage_path=tmp_path / "storage", retry_s=1, buffer_limit=2,
                                    log=lines.append)
    for epoch in range(5):
        logger.log_epoch(epoch, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    folder = tmp_path / "storage" / tracking_buffer.UNLOGGED / run_id
    assert len(logger.buffer.memory) == 2 and len((folder / tracking_buffer.SPILL).read_text().splitlines()) == 3
    logger.buffer.append({"op": "status", "status": "FINISHED"})
    with pytest.raises(tracking.TrackingUnavailable) as err:
        logger.flush()
    assert any("unreachable" in line for line in lines)
    assert str(folder) in str(err.value)
    command = shlex.split(re.search(r"log them with: (.+)$", str(err.value)).group(1))
    assert command[:3] == ["distfair", "relog", str(folder.parent)] and command[3:] == ["--tracking-uri", away]
    assert len(tracking_buffer.read_parked(folder)[1]) == 6
    assert cli.main(["relog", str(folder.parent), "--tracking-uri", store]) == 0      # into the store that has it
    client = MlflowClient(store)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [0, 1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED" and not folder.exists()


@pytest.mark.parametrize("planted", ["absolute", "dotdot", "link"])
def test_relog_refuses_a_parked_folder_that_names_a_file_outside_itself(tmp_path, capsys, planted):
    """Issue 28 §2: a parked folder whose writes name a file outside it (a planted absolute path,
    a ``..``, a link out of the folder) makes `distfair relog` upload nothing, exit 2."""
    from distfair import cli, tracking

    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = hunter2")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.get_or_create_seed_run(store, tracking.prepare_experiment(store, "planted"), "parent", 0)
    (tmp_path / "result.json").write_text('{"seed": 0}')
    buffer = WriteBuffer(tmp_path / "unlogged" / run_id, limit=5)
    buffer.append({"op": "artifact", "file": str(tmp_path / "result.json"), "artifact_path": None})
    buffer.stash_files()
    folder = buffer.park({"run_id": run_id, "tracking_uri": store, "reason": "down"})
    if planted == "absolute":
        op = {"op": "artifact", "file": str(secret), "artifact_path": None}
    elif planted == "dotdot":
        op = {"op": "artifact", "file": f"../../{secret.name}", "artifact_path": None, "stashed": True}
    else:
        (folder / "files" / "link").symlink_to(secret)
        op = {"op": "artifact", "file": "files/link", "artifact_path": None, "stashed": True}
    with open(folder / tracking_buffer.PENDING, "a") as f:
        f.write(json.dumps(op) + "\n")
    assert cli.main(["relog", str(folder.parent), "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "not a copy inside this folder; nothing was logged" in err and "hunter2" not in err
    assert MlflowClient(store).list_artifacts(run_id) == [] and folder.exists()      # nothing uploaded
