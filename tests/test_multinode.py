"""A real multi-node Ray cluster and a real MLflow tracking server, both on this one machine.

The cluster is made as a deployment makes it (cluster/README.md, "Without the launcher"):
three ``ray start --block`` processes with token auth, a head with no CPUs that declares the
sweep's ``distfair_trial`` resource, and two worker nodes of 1 CPU each, so that whatever
needs two CPUs at once has to use both nodes. Every node has its own ``--temp-dir``: Ray
writes the cluster's address to ``<temp dir>/ray_current_cluster``, and in the default
``/tmp/ray`` a plain ``ray.init()`` elsewhere on this machine (another test run) would join this
cluster instead of starting its own. The tracking is a real ``mlflow server`` (its own SQLite
file, artifacts proxied over HTTP into its own folder); the distfair commands join with
``--address`` and ``--tracking-uri http://127.0.0.1:PORT``, and the tests read back through
``MlflowClient`` over HTTP only. One cluster and one server for the whole module; every process
started here runs in its own session and is stopped by its process group, also on failure.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY, stop_process_group
from distfair.distributed.worker import PAUSE_WORKER_AT
from distfair.results import record

#: credentials a user may have in the environment of the driver and of every node; each is a
#: unique marker that must never reach the tracking server's store
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AZURE_STORAGE_ACCESS_KEY", "DATABRICKS_TOKEN")
MARKERS = {name: f"dfmarker{uuid.uuid4().hex}" for name in CREDENTIAL_VARS}
#: per worker node: its logical CPUs; the head has none (trial drivers and Train controllers
#: take 0 CPU), so two 1-CPU workers or groups can only run side by side on different nodes
WORKER_NODES, CPUS_PER_NODE = 2, 1
CLEAN_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
             "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return {**env, **MARKERS}


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own session (so its process group is exactly what it started)."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


_stop = stop_process_group


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


NODES_PROBE = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes]))
"""


def _probed(stdout: str) -> list[dict]:
    """The probe's JSON line: Ray may print its own lines to a driver's stdout after it (a
    worker that died on a loaded machine, "[repeated 3x across cluster]")."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("[")
                           and not line.startswith("[repeated") and line.rstrip().endswith("]")))


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """``(process, http URI, the folder holding the server's whole store, its log)``: a real
    ``mlflow server`` with its own SQLite file and artifact folder, started but not yet waited
    for (it boots while the cluster comes up; :func:`mlflow_server` waits)."""
    store = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = store.parent / f"{store.name}.log"        # beside the store: the grep reads the store only
    proc = _start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{store}/server.db",
                   "--artifacts-destination", str(store / "artifacts")], _base_env(), log)
    try:
        yield proc, f"http://127.0.0.1:{port}", store, log
    finally:
        _stop(proc)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"nothing listens on port {port} (exit code {proc.poll()}):\n{_tail(log)}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(server_process):
    """``{"address", "env", "workers": [node id, ...], "head": node id, "node_procs"}``: a head and two
    1-CPU worker nodes, each a ``ray start --block`` with token auth on 127.0.0.1. (After
    ``server_process`` only so that both boot at the same time.)"""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # Ray's socket paths live under the temp dir and must stay short (AF_UNIX: 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="dfmn-"))
    # The nodes get the auth mode and a token of their own (not ~/.ray/auth_token, shared with
    # whatever else runs here) and, as on a real deployment, the users' credentials.
    env = {**_base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    gcs_port = _free_port()
    address = f"127.0.0.1:{gcs_port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-gpus", "0", "--disable-usage-stats",
              "--object-store-memory", str(128 * 1024 ** 2)]
    procs: list[subprocess.Popen] = []

    def agent_ports() -> list[str]:
        # the defaults (52365, ...) would collide between nodes on one machine
        return ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port",
                str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
                "--metrics-export-port", str(_free_port())]

    try:
        procs.append(_start([ray_bin, "start", "--head", "--port", str(gcs_port), "--num-cpus", "0",
                             "--resources", json.dumps({"distfair_trial": 1000}), "--include-dashboard", "true",
                             "--dashboard-port", str(_free_port()), "--ray-client-server-port", str(_free_port()),
                             "--temp-dir", str(root / "head"), *common, *agent_ports()], env, root / "head.log"))
        _wait_for_port(gcs_port, procs[0], root / "head.log")

        def start_worker_node(i: int) -> subprocess.Popen:
            # appended to procs: stopped by this fixture's teardown, also when a test adds it
            procs.append(_start([ray_bin, "start", "--address", address, "--num-cpus", str(CPUS_PER_NODE),
                                 "--temp-dir", str(root / f"node{i}"), *common, *agent_ports()], env,
                                root / f"node{i}.log"))
            return procs[-1]

        for i in range(WORKER_NODES):
            start_worker_node(i)
        probe = subprocess.run([sys.executable, "-c", NODES_PROBE, address, str(1 + WORKER_NODES), "120"], env=env,
                               capture_output=True, text=True, timeout=180)
        assert probe.returncode == 0, f"{probe.stderr[-3000:]}\n{_tail(root / 'head.log')}"
        nodes = _probed(probe.stdout)
        assert len(nodes) == 1 + WORKER_NODES, f"nodes: {nodes}\n{_tail(root / 'node0.log')}"
        workers = [n["id"] for n in nodes if n["resources"].get("CPU", 0) > 0]
        head = [n["id"] for n in nodes if n["resources"].get("distfair_trial")]
        assert len(workers) == WORKER_NODES and len(head) == 1, nodes
        # node_procs: the worker nodes' `ray start --block` processes (a node's raylet and
        # workers are among its descendants), for the tests that lose a node
        # start_worker_node(i): a further worker node (index i, a new temp dir), for a test that
        # replaces the node it lost
        yield {"address": address, "env": env, "workers": workers, "head": head[0], "node_procs": procs[1:],
               "start_worker_node": start_worker_node}
    finally:
        for proc in reversed(procs):            # worker nodes first, then the head
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(server_process, cluster):
    """``(http URI, the folder holding the server's whole store)`` once the server answers
    ``/health``; clients only ever talk HTTP to it."""
    proc, uri, store, log = server_process
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return uri, store
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer /health in 180 s:\n{_tail(log)}")
        time.sleep(0.5)


def distfair(command: str, config: dict, *, cluster: dict, uri: str, cwd: Path, extra: tuple = ()) -> dict:
    """The real command in its own process, joined to the cluster. Its environment has the
    credentials and the cluster's token but no ``RAY_AUTH_MODE``: joining must set it.
    ``--allow-local``: the storage path is on this one machine, which all its nodes share."""
    path = cwd / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "-m", "distfair.cli", command, str(path), "--json", "--address",
                           cluster["address"], "--tracking-uri", uri, "--experiment", command, "--storage-path",
                           str(cwd / "ray_storage"), "--allow-local", *extra],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def tiny(**changes) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["scaling"].pop("max_concurrent_seeds")      # a group per node where they fit
    cfg["train"]["epochs"] = 1
    cfg["eval"] = {"attacks": [{"name": "fgsm", "attack": "fgsm"}]}
    cfg["seeds"] = [0]
    for block, values in changes.items():
        cfg[block] = {**cfg.get(block, {}), **values} if isinstance(values, dict) else values
    return cfg


def seed_records(client: MlflowClient, experiment: str) -> dict[str, dict]:
    """``{seed run id: its result record}`` of an experiment, downloaded over HTTP."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`distfair.role` = 'seed'")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            assert run.info.status == "FINISHED", run
            path = client.download_artifacts(run.info.run_id, record.SEED_RECORD_NAME, tmp)
            out[run.info.run_id] = json.loads(Path(path).read_text())
    return out


@pytest.fixture(scope="module")
def ddp_run(cluster, mlflow_server, tmp_path_factory):
    """One seed of a 2-worker DDP group with SPREAD placement, 0.5 CPU per worker: PACK would
    put both workers on one 1-CPU node, SPREAD must not."""
    uri, _ = mlflow_server
    cfg = tiny(scaling={"num_workers": 2, "resources_per_worker": {"CPU": 0.5}, "placement_strategy": "SPREAD"})
    return distfair("run", cfg, cluster=cluster, uri=uri, cwd=tmp_path_factory.mktemp("ddp"))


@pytest.mark.ray
def test_spread_ddp_group_has_its_workers_on_different_nodes_in_the_record(cluster, mlflow_server, ddp_run):
    uri, _ = mlflow_server
    client = MlflowClient(uri)
    parent = client.get_run(ddp_run["parent_run_id"])
    assert parent.info.status == "FINISHED" and ddp_run["seeds"] == [0]
    (run_id, doc), = seed_records(client, "run").items()
    nodes = doc["worker_node_ids"]                  # index = world rank
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert set(nodes) == set(cluster["workers"])
    assert client.get_run(run_id).data.tags["distfair.worker_node_ids"] == ",".join(nodes)
    assert doc["config"]["scaling"]["placement_strategy"] == "SPREAD"
    assert client.get_run(run_id).data.metrics["clean_acc"] >= 0       # trained and evaluated across nodes


@pytest.mark.ray
def test_sweep_starts_a_worker_group_per_node_and_runs_its_configurations_on_them(cluster, mlflow_server,
                                                                                tmp_path_factory):
    """Two configurations x one seed: the sweep starts one 1-CPU worker group (slot) per node and
    keeps them for both configurations; each seed runs on a worker node (the head has no CPU) and
    its record names it. Which slot takes which configuration is whichever is free first, so
    both may run on one node (the SPREAD test above checks placement across nodes)."""
    uri, _ = mlflow_server
    cfg = tiny(space={"params": {"defense.lambda_sym": {"type": "float", "low": 0.05, "high": 2.0, "log": True}},
                      "objective": {"metric": "val_robust_acc", "stat": "mean", "mode": "max"},
                      "search": {"sampler": "random", "seed": 0, "num_samples": 2}})
    report = distfair("sweep", cfg, cluster=cluster, uri=uri, cwd=tmp_path_factory.mktemp("sweep"))
    client = MlflowClient(uri)
    docs = seed_records(client, "sweep")
    assert len(report["trials"]) == 2 and len(docs) == 2
    configurations = {client.get_run(run_id).data.tags["mlflow.parentRunId"] for run_id in docs}
    assert configurations == {t["parent_run_id"] for t in report["trials"]}
    assert all(len(d["worker_node_ids"]) == 1 for d in docs.values())
    assert {d["worker_node_ids"][0] for d in docs.values()} <= set(cluster["workers"])
    assert client.get_run(report["sweep_run_id"]).data.params["worker_groups"] == "2"     # one per node


def test_bad_placement_strategy_is_refused_before_anything_starts(tmp_path, capsys):
    from distfair import cli

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(scaling={"placement_strategy": "DIAGONAL"})))
    assert cli.main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "scaling.placement_strategy" in err and "DIAGONAL" in err and "SPREAD" in err
    assert not (tmp_path / "m.db").exists()


def _descendants(proc: subprocess.Popen) -> list:
    import psutil

    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _latest_checkpoint(storage: Path) -> dict | None:
    """The metrics of the checkpoint Ray Train would resume a group from (its controller's
    ``checkpoint_manager_snapshot.json``, rewritten each time it registers a checkpoint)."""
    for path in storage.glob("*/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(OSError, ValueError):
            latest = json.loads(path.read_text()).get("latest_checkpoint_result")
            if latest:
                return latest["metrics"]
    return None


@pytest.mark.ray
def test_lost_worker_node_the_group_needs_fails_the_run_naming_node_and_resources(cluster, mlflow_server,
                                                                                tmp_path_factory):
    """A 2-worker x 1-CPU group needs both 1-CPU worker nodes; one node's raylet is killed
    (SIGKILL) mid-run. The group can no longer fit anywhere, so instead of Ray Train retrying
    its start forever the command gives up on it: exit 1, the terminal names the lost node and
    what a group needs, the seed's and the parent's runs end FAILED, none RUNNING. A fresh
    worker node then replaces the lost one, for the tests after this one."""
    uri, _ = mlflow_server
    cwd = tmp_path_factory.mktemp("lost_needed_node")
    # 20 epochs: training must outlast the GCS marking the node dead (~15 s of missed heartbeats);
    # the kill stops it at once (the other worker's allreduce breaks), so they are never all run
    cfg = tiny(train={"epochs": 20}, dataset={"num_samples": 2400}, attack={"steps": 5},
               scaling={"num_workers": 2, "resources_per_worker": {"CPU": 1}, "max_failures": 1})
    path = cwd / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_MODE"}
    err = cwd / "stderr.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", str(path), "--json", "--address",
                                 cluster["address"], "--tracking-uri", uri, "--experiment", "lost_needed_node",
                                 "--storage-path", str(cwd / "ray_storage"), "--allow-local"],
                                cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _latest_checkpoint(cwd / "ray_storage") is None:     # training on both nodes
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw an epoch checkpoint (exit {proc.poll()}):\n{_tail(err)}")
            time.sleep(0.2)
        victim = cluster["node_procs"][0]
        raylets = [p for p in _descendants(victim) if p.name() == "raylet"]
        assert len(raylets) == 1, raylets
        raylets[0].kill()
        proc.wait(timeout=300)
    finally:
        _stop(proc)
    stderr = err.read_text()
    alive = {n["id"] for n in _alive_nodes(cluster)}
    (lost,) = set(cluster["workers"]) - alive
    assert proc.returncode == 1, stderr[-4000:]
    # the address is the node's own (NodeManagerAddress), whatever this machine reports
    assert re.search(rf"node {lost[:8]} \([^)]+\) was lost; a worker group needs 2 worker\(s\) x \{{CPU: 1\.0\}} "
                     r"and the alive nodes have \w{8} \(", stderr), stderr[-4000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lost_needed_node")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs), [(r.info.run_name, r.info.status)
                                                                              for r in runs]
    # a fresh worker node in place of the lost one: the next test loses a node of two again
    cluster["node_procs"][0] = cluster["start_worker_node"](len(cluster["workers"]))
    deadline = time.monotonic() + 180
    while len(now := [n for n in _alive_nodes(cluster) if n["resources"].get("CPU", 0) > 0]) < WORKER_NODES:
        assert time.monotonic() < deadline, f"the replacement node never joined: {now}"
        time.sleep(1)
    cluster["workers"] = [n["id"] for n in now]


@pytest.mark.ray
def test_lost_worker_node_reschedules_the_group_on_the_remaining_node(cluster, mlflow_server, tmp_path_factory):
    """The raylet of the node running a 1-CPU group is killed (SIGKILL) after the group's first
    epoch checkpoint: Ray Train (``scaling.max_failures: 1``) restarts the group on the other
    node, which resumes the seed from that checkpoint in the shared storage; the command exits
    0 and no run is left RUNNING. Kills a node of the module's cluster: after every test that
    runs something on it."""
    uri, _ = mlflow_server
    cwd = tmp_path_factory.mktemp("lost_node")
    cfg = tiny(train={"epochs": 3}, dataset={"num_samples": 2400}, attack={"steps": 5},
               scaling={"max_failures": 1})
    path = cwd / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the worker pauses once its first epoch's checkpoint is registered, and says so
    # (distfair.distributed.worker.PAUSE_WORKER_AT): the node is killed then, no timing window
    env = {**{k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_MODE"}, PAUSE_WORKER_AT: "0:1"}
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", str(path), "--json", "--address",
                                 cluster["address"], "--tracking-uri", uri, "--experiment", "lost_node",
                                 "--storage-path", str(cwd / "ray_storage"), "--allow-local"],
                                cwd=cwd, env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        paused = f"[distfair] test hook {PAUSE_WORKER_AT}: pausing this worker after seed 0's epoch 1 checkpoint"
        while paused not in err.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker never paused after its first epoch (exit {proc.poll()}):\n{_tail(err)}")
            time.sleep(0.2)
        hosting = [node for node in cluster["node_procs"]
                   if any(_cmdline(p).startswith("ray::RayTrainWorker") for p in _descendants(node))]
        assert len(hosting) == 1, hosting
        raylets = [p for p in _descendants(hosting[0]) if p.name() == "raylet"]
        assert len(raylets) == 1, raylets
        raylets[0].kill()
        proc.wait(timeout=400)
    finally:
        _stop(proc)
    stderr = err.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    # the progress line reaches the terminal through a queue actor that may have been on the
    # lost node; the workers' own output is in the log file either way
    log_file = next(line.split(": ", 1)[1] for line in stderr.splitlines()
                    if line.startswith("[distfair] Ray, Tune and worker output: "))
    # resumed from the first epoch's checkpoint, the last one registered when the node died
    resumed = re.findall(r"\[distfair\] seed 0: resumed after epoch (\d)", stderr + Path(log_file).read_text())
    assert resumed and set(resumed) == {"1"}, stderr[-4000:]      # in the terminal and the log file
    report = json.loads(out.read_text())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lost_node")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status)
                                                                                for r in runs]
    (doc,) = seed_records(client, "lost_node").values()
    survivor = {n["id"] for n in _alive_nodes(cluster)} & set(cluster["workers"])
    assert len(survivor) == 1 and doc["worker_node_ids"] == sorted(survivor), (doc["worker_node_ids"], survivor)
    assert report["seeds"] == [0]
    steps = [m.step for m in client.get_metric_history(next(iter(seed_records(client, "lost_node"))), "train_loss")]
    assert sorted(steps) == [0, 1, 2]                 # each epoch once: none logged again after the restart


def _alive_nodes(cluster: dict) -> list[dict]:
    probe = subprocess.run([sys.executable, "-c", NODES_PROBE,
                            cluster["address"], "0", "0"], env=cluster["env"], capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return _probed(probe.stdout)


@pytest.mark.ray
def test_no_credential_reaches_the_tracking_store(mlflow_server, ddp_run):
    """Every command of this module ran with credentials in the environment of its driver and
    of every node: none of them, nor the basic-auth header made of two of them, is anywhere in
    the server's store (the SQLite file, its journal, every artifact). Runs last in the module
    so that the sweep's records are searched too."""
    _, store = mlflow_server
    basic = base64.b64encode(f"{MARKERS['MLFLOW_TRACKING_USERNAME']}:{MARKERS['MLFLOW_TRACKING_PASSWORD']}"
                             .encode()).decode()
    needles = {**MARKERS, "basic auth header": basic}
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.name == "server.db" for p in files) and any(p.name == record.SEED_RECORD_NAME for p in files)
    found = [(name, str(p)) for p in files for name, needle in needles.items() if needle.encode() in p.read_bytes()]
    assert not found, found
