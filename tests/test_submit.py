"""`distfair submit` (a run sent as a Ray Job to a real `ray start --head`) and the refusal of
node-local tracking stores and storage paths when a command joins a cluster."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import stop_process_group
from distfair import cli
from distfair.distributed.submit import (SUBMIT_EXCLUDES, job_entrypoint, mount_of, node_local_problems,
                                         runtime_env)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "tune_spaces" / "quickstart.yaml"
QUICKSTART_SWEEP = ROOT / "tune_spaces" / "quickstart_sweep.yaml"
MOUNTS = "/dev/sda1 / ext4 rw 0 0\nfs:/export /mnt/shared nfs4 rw 0 0\n/dev/sdb /mnt/shared/local\\040disk xfs rw 0 0\n"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No cluster in the environment, no tracking URI, and a fresh working directory; what
    `main` sets (RAY_AUTH_MODE) is undone after the test."""
    for name in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the refusal (no Ray is started: every case ends before ray_session)

@pytest.mark.parametrize("command, config", [("run", QUICKSTART), ("sweep", QUICKSTART_SWEEP)])
def test_address_with_default_sqlite_and_storage_is_refused(clean_env, capsys, command, config):
    assert cli.main([command, str(config), "--address", "auto"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--tracking-uri: sqlite:///{clean_env / 'mlflow.db'} is a file on this node" in err
    assert "--tracking-uri https://MLFLOW_HOST" in err and "--allow-local" in err
    assert f"--storage-path: {clean_env / 'distfair_runs'} is on " in err and "network file system" in err
    assert "Traceback" not in err
    assert not (clean_env / "mlflow.db").exists() and not (clean_env / "distfair_runs").exists()


def test_shared_tracking_with_local_storage_names_only_the_storage(clean_env, capsys):
    code = cli.main(["run", str(QUICKSTART), "--address", "10.0.0.5:6379", "--tracking-uri", "http://mlflow.internal:5000",
                     "--storage-path", str(clean_env / "runs")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "--storage-path:" in err and "--tracking-uri:" not in err


def test_driver_of_a_ray_job_is_checked_without_address(clean_env, capsys, monkeypatch):
    # `ray job submit -- distfair run cfg.yaml`: the job supervisor sets this for its driver
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert cli.main(["run", str(QUICKSTART)]) == cli.EXIT_USAGE
    assert "is a file on this node" in capsys.readouterr().err


@pytest.mark.parametrize("uri, local", [
    ("sqlite:////srv/mlflow.db", True), ("file:///srv/mlruns", True), ("/srv/mlruns", True),
    ("http://127.0.0.1:5000", True), ("http://localhost:5000", True), ("http://mlflow.internal:5000", False),
    ("https://mlflow.example.org", False), ("postgresql://mlflow@db.internal/mlflow", False), ("databricks://prod", False),
])
def test_which_tracking_uris_count_as_node_local(tmp_path, uri, local):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    problems = node_local_problems(uri, "/mnt/shared/runs", mounts)
    assert bool(problems) == local, problems


@pytest.mark.parametrize("path, expected", [
    ("/mnt/shared/runs", ("/mnt/shared", "nfs4")),
    ("/mnt/shared", ("/mnt/shared", "nfs4")),
    ("/mnt/shared/local disk/runs", ("/mnt/shared/local disk", "xfs")),      # the longest mount point wins
    ("/mnt/sharedx/runs", ("/", "ext4")),                                    # a prefix of the name is not a parent
    ("/home/me/distfair_runs", ("/", "ext4")),
])
def test_mount_of_reads_proc_mounts_format(tmp_path, path, expected):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert mount_of(path, mounts) == expected


def test_storage_on_network_file_system_passes_and_local_or_uri_is_refused(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    shared_uri = "http://mlflow.internal:5000"
    assert node_local_problems(shared_uri, "/mnt/shared/runs", mounts) == []
    [local] = node_local_problems(shared_uri, "/mnt/shared/local disk/runs", mounts)
    assert "on /mnt/shared/local disk (xfs)" in local
    [uri] = node_local_problems(shared_uri, "s3://bucket/runs", mounts)
    assert "is a URI" in uri and "file system path mounted on every node" in uri
    assert node_local_problems(shared_uri, "/mnt/shared/runs", tmp_path / "no-such-mounts-file")  # unknown: refused


def test_submit_refuses_before_contacting_the_cluster(clean_env, capsys):
    # port 1 is never a dashboard: every case must fail before the client connects
    base = ["submit", "run", str(QUICKSTART), "--working-dir", str(ROOT), "--address", "http://127.0.0.1:1"]
    assert cli.main(base) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--tracking-uri: missing" in err and "--storage-path: missing" in err
    assert cli.main(base + ["--tracking-uri", "sqlite:///mlflow.db", "--storage-path", "runs", "--allow-local"]) == 2
    err = capsys.readouterr().err
    assert "sqlite:///mlflow.db is relative" in err and "runs is relative" in err
    assert cli.main(base + ["--tracking-uri", "sqlite:////srv/mlflow.db", "--storage-path", "/mnt/x"]) == 2
    assert "is a file on this node" in capsys.readouterr().err
    assert cli.main(base + ["--tracking-uri", "http://mlflow.internal:5000", "--storage-path", "/mnt/x",
                            "--set", "train.epochs=fast"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert cli.main(base + ["--num-seeds", "0"]) == 2                   # the run's own option parser
    assert "--num-seeds" in capsys.readouterr().err
    outside = ["submit", "run", str(QUICKSTART), "--working-dir", str(clean_env), "--address", "http://127.0.0.1:1"]
    assert cli.main(outside) == 2
    assert "not inside the working directory" in capsys.readouterr().err
    assert cli.main(["submit", "run", str(QUICKSTART), "--address", "auto"]) == 2
    assert "--address: 'auto' is not a URL" in capsys.readouterr().err


def test_submit_reports_an_unreachable_dashboard_in_one_line(clean_env, capsys):
    code = cli.main(["submit", "run", str(QUICKSTART), "--working-dir", str(ROOT), "--address", "http://127.0.0.1:1",
                     "--tracking-uri", "http://mlflow.internal:5000", "--storage-path", "/mnt/x"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "error: --address http://127.0.0.1:1: the job was not submitted: ConnectionError" in err
    assert "Traceback" not in err


def test_job_entrypoint_joins_its_own_cluster():
    entry = job_entrypoint("run", "cfgs/my run.yaml", ["--set", "train.epochs=1", "--address", "http://h:8265",
                                                       "--seeds", "0"], "http://mlflow.internal:5000")
    assert entry == ("distfair run 'cfgs/my run.yaml' --set train.epochs=1 --seeds 0 --address auto "
                     "--tracking-uri http://mlflow.internal:5000")
    entry = job_entrypoint("sweep", "s.yaml", ["--address=http://h:8265", "--tracking-uri", "http://m:5000"],
                           "http://m:5000")
    assert entry == "distfair sweep s.yaml --tracking-uri http://m:5000 --address auto"


def test_shipped_working_dir_leaves_out_environments_and_results(tmp_path):
    # Ray's own matcher for runtime_env `excludes` (private, Ray 2.60: ray/_private/runtime_env/packaging.py)
    from ray._private.runtime_env.packaging import _get_excludes

    env = runtime_env(tmp_path)
    assert env["working_dir"] == str(tmp_path.resolve()) and env["excludes"] == list(SUBMIT_EXCLUDES)
    excluded = _get_excludes(tmp_path, env["excludes"])
    for left_out in (".venv/bin/python", ".venv-ci/lib/x.py", "mlruns/0/meta.yaml", "mlflow.db", "distfair_runs/a/b",
                     "report/report.html", "distfair_analysis/x.csv", ".git/HEAD", "distfair/__pycache__/cli.pyc",
                     "teacher.pt"):
        assert excluded(tmp_path / left_out), left_out
    for shipped in ("distfair/report/__init__.py", "distfair/data/__init__.py", "tune_spaces/quickstart.yaml",
                    "pyproject.toml", "cluster/mlflow/serve.sh"):
        assert not excluded(tmp_path / shipped), shipped


# --- credentials are never committed, built into an image or shipped with a job (issue 28 §8)

#: what must be left out everywhere, in gitignore syntax: environment files, Ray's token file,
#: TLS keys, cloud and Kubernetes credentials
SECRETS = (".env", ".env.*", "auth_token", "*.pem", "*.key", ".aws/", "credentials.json", "*service-account*.json",
           "gcloud/", ".config/gcloud/", "kubeconfig", ".kube/")
#: one planted file per pattern, some of them deeper in the tree
PLANTED = (".env", "sub/.env", ".env.production", "auth_token", "x.pem", "tls/server.key", ".aws/credentials",
           "sub/.aws/config", "credentials.json", "my-service-account-123.json", "gcloud/adc.json",
           ".config/gcloud/credentials.db", "kubeconfig", ".kube/config")
ORDINARY = ("distfair/__init__.py", "distfair/deploy/credentials.py", "tune_spaces/a.yaml", "keep.txt", "env.py",
            "docs/keys.md")


def _patterns(path: Path) -> set[str]:
    """The patterns of an ignore file, written alike: no leading ``**/`` (Docker's patterns are
    anchored at the root, so ``**/`` is how they reach every depth), no leading or trailing ``/``."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {_bare(line) for line in lines if line and not line.startswith("#")}


def _bare(pattern: str) -> str:
    return pattern.removeprefix("**/").strip("/")


def test_every_credential_pattern_is_in_gitignore_dockerignores_and_the_job_excludes(tmp_path):
    places = {name: _patterns(ROOT / name) for name in (".gitignore", ".dockerignore",
                                                         "cluster/kuberay/Dockerfile.dockerignore")}
    places["distfair submit's excludes"] = {_bare(p) for p in runtime_env(tmp_path)["excludes"]}
    missing = {where: sorted({_bare(p) for p in SECRETS} - have) for where, have in places.items()}
    assert missing == {where: [] for where in places}
    for name in (".dockerignore", "cluster/kuberay/Dockerfile.dockerignore"):   # Docker: every depth
        lines = set((ROOT / name).read_text().splitlines())
        assert {f"**/{_bare(p)}" for p in SECRETS} <= lines, name


def _plant(root: Path, names) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("secret\n")


@pytest.mark.parametrize("through", ["excludes", ".gitignore"])
def test_planted_credentials_stay_out_of_the_package_ray_builds(tmp_path, through):
    """Ray's own packer of a job's working directory (``_zip_files``, what ``working_dir``
    uploads go through; Ray is not started) leaves out every planted credential: through the
    job's ``excludes`` alone, and through this repository's ``.gitignore`` alone (Ray applies it
    too, and ``ray up`` copies the checkout through it: ``rsync_filter``)."""
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    work = tmp_path / "work"
    _plant(work, PLANTED + ORDINARY)
    if through == ".gitignore":
        shutil.copy(ROOT / ".gitignore", work / ".gitignore")
        excludes = []
    else:
        excludes = runtime_env(work)["excludes"]
    _zip_files(str(work), excludes, str(tmp_path / "pkg.zip"), include_gitignore=through == ".gitignore")
    shipped = {n.rstrip("/") for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist()}
    assert set(ORDINARY) <= shipped
    assert shipped & set(PLANTED) == set()
    assert not any(n.startswith((".aws", "sub/.aws", "gcloud", ".config", ".kube")) for n in shipped), sorted(shipped)


def test_the_credential_patterns_leave_the_project_itself_alone():
    """No file of the project matches a credential pattern (so none is dropped from a job, an
    image or a commit)."""
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(ROOT, list(SECRETS))
    files = [p for top in ("distfair", "scripts", "cluster", "tune_spaces", "docs", "tests")
             for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 100
    assert [str(p.relative_to(ROOT)) for p in files if excluded(p)] == []


# --- a real `ray start --head` and a job through its dashboard

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A `ray start --head --block` of its own (token auth, its own temp dir and ports), ended
    by signalling the processes it started: never `ray stop`, which ends every Ray instance on
    the machine."""
    temp = tempfile.mkdtemp(prefix="dfsub", dir="/tmp")       # short: Ray's socket paths live under it
    dashboard = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR",
                                                             "MLFLOW_TRACKING_URI")}
    # the job's driver runs `distfair` from PATH, as on a cluster with distfair installed
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    log = open(Path(temp) / "ray_start.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=2",
         f"--port={_free_port()}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(address, env, head, temp)
        yield {"address": address, "env": env}
    finally:
        # start_new_session: the head's process group holds only what it started (GCS, raylet,
        # dashboard, workers, the jobs' drivers)
        stop_process_group(head, grace_s=10)
        head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_dashboard(address: str, env: dict, head: subprocess.Popen, temp: str, timeout: float = 90) -> None:
    """Until the dashboard's job API answers an authenticated client (the head is up)."""
    code = ("import sys; from ray.job_submission import JobSubmissionClient\n"
            f"JobSubmissionClient({address!r}).list_jobs()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{(Path(temp) / 'ray_start.log').read_text()}")
        if subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(2)
    pytest.fail(f"the dashboard at {address} did not answer in {timeout} s")


def _wait_for_jobs(ray_head: dict, job_ids: list[str], timeout: float = 400) -> dict[str, tuple[str, str]]:
    """{job id: (final status, logs)}, polled with Ray's client in a separate process (the
    auth mode is read once per process, and this one may have run Ray without it)."""
    code = f"""
import json, time
from ray.job_submission import JobSubmissionClient, JobStatus
client, ids = JobSubmissionClient({ray_head['address']!r}), {job_ids!r}
deadline = time.monotonic() + {timeout}
while any(client.get_job_status(i) not in {{JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}} for i in ids):
    if time.monotonic() > deadline:
        for i in ids:
            client.stop_job(i)
        break
    time.sleep(1)
print(json.dumps({{i: (str(client.get_job_status(i).value), client.get_job_logs(i)) for i in ids}}))
"""
    done = subprocess.run([sys.executable, "-c", code], env=ray_head["env"], capture_output=True, text=True,
                          timeout=timeout + 60)
    assert done.returncode == 0, done.stderr
    return {i: tuple(v) for i, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _submit(ray_head: dict, workdir: Path, *options: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "distfair.cli", "submit", "run", "quickstart.yaml",
                           "--address", ray_head["address"], "--json", *options],
                          cwd=workdir, env=ray_head["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    assert f"ray job logs --follow {submitted['job_id']} --address {ray_head['address']}" in done.stderr
    assert f"ray job status {submitted['job_id']}" in done.stderr and f"ray job stop {submitted['job_id']}" in done.stderr
    return submitted


@pytest.fixture(scope="module")
def jobs(ray_head, tmp_path_factory):
    """Two jobs submitted at once (they overlap, which keeps the module short): a tiny
    quickstart run recorded in a SQLite store that the single-node cluster may use
    (--allow-local), and one whose storage path the head does not share."""
    tmp = tmp_path_factory.mktemp("submit")
    workdir = tmp / "checkout"
    (workdir / ".venv").mkdir(parents=True)
    (workdir / ".venv" / "huge.bin").write_bytes(b"\0" * 1024)     # left out by the excludes
    shutil.copy(QUICKSTART, workdir / "quickstart.yaml")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run = _submit(ray_head, workdir, "--set", "train.epochs=1", "--seeds", "0", "--tracking-uri", uri,
                  "--storage-path", str(tmp / "runs"), "--allow-local")
    # the tracking server named here is never contacted: the job stops before
    refused = _submit(ray_head, workdir, "--tracking-uri", "http://mlflow.invalid:5000",
                      "--storage-path", str(tmp / "unshared"))
    # a long run stopped with `ray job stop` once it logged an epoch (its own store: one writer each)
    stop_db = tmp / "stopped.db"
    # made before the job and this test open it: two first openers of a SQLite store race on
    # its schema migration (the Ctrl-C test does the same)
    from distfair import tracking

    tracking.prepare_experiment(f"sqlite:///{stop_db}", "quickstart")
    stopped = _submit(ray_head, workdir, "--set", "train.epochs=500", "--seeds", "0", "--tracking-uri",
                      f"sqlite:///{stop_db}", "--storage-path", str(tmp / "runs-stopped"), "--allow-local")
    stop = _stop_after_an_epoch(ray_head, stopped["job_id"], stop_db)
    done = _wait_for_jobs(ray_head, [run["job_id"], refused["job_id"], stopped["job_id"]])
    return {"tmp": tmp, "uri": uri, "run": (run, *done[run["job_id"]]), "refused": (refused, *done[refused["job_id"]]),
            "stopped": (stopped, *done[stopped["job_id"]], stop_db, stop)}


def _stop_after_an_epoch(ray_head: dict, job_id: str, db: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``ray job stop`` (Ray's own command, as ``distfair submit`` prints it) once the job's
    seed run has an epoch in the store."""
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        if not db.exists():
            continue
        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("quickstart")
        if experiment and any("train_loss" in r.data.metrics for r in client.search_runs([experiment.experiment_id])):
            break
    else:
        pytest.fail("the job to stop logged no epoch in time")
    return subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "stop", job_id, "--address",
                           ray_head["address"]], env=ray_head["env"], capture_output=True, text=True, timeout=180)


@pytest.mark.ray
def test_submitted_run_finishes_and_is_recorded_in_mlflow(jobs):
    from distfair import tracking

    submitted, status, logs = jobs["run"]
    assert submitted["entrypoint"].startswith("distfair run quickstart.yaml ")
    assert "--set train.epochs=1 --seeds 0" in submitted["entrypoint"]
    assert submitted["entrypoint"].endswith("--address auto")
    assert status == "SUCCEEDED", logs
    uri = jobs["uri"]
    experiment_id = tracking.find_experiment(uri, "quickstart")
    [configuration] = tracking.configuration_params(uri, experiment_id)
    assert configuration["status"] == "FINISHED" and configuration["params"]["train.epochs"] == "1"
    finished = tracking.finished_seed_runs(uri, experiment_id, configuration["run_id"])
    assert sorted(finished) == [0]
    assert 0.0 <= finished[0][1]["clean_acc"] <= 1.0


@pytest.mark.ray
def test_ray_job_stop_ends_the_run_as_ctrl_c_does_its_runs_killed_and_exit_143(jobs):
    """SIGTERM (what `ray job stop` sends, then SIGKILL after the grace period distfair sets in
    the job's runtime env) is handled like Ctrl-C: the open runs are marked KILLED, one line
    says so, and the driver exits 143 before the SIGKILL (issue 28 §5)."""
    from mlflow.tracking import MlflowClient

    submitted, status, logs, db, stop = jobs["stopped"]
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert status == "STOPPED", logs
    assert "terminated (SIGTERM): the runs were marked KILLED in MLflow" in logs, logs[-3000:]
    assert "distfair run quickstart.yaml" in logs and "--resume" in logs
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert sorted(r.data.tags.get("distfair.role") for r in runs) == ["configuration", "seed"]
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]


@pytest.mark.ray
def test_job_refuses_storage_its_head_does_not_share(jobs):
    # submit cannot see the cluster's mounts; the job's own `distfair run --address auto`
    # checks them on the head and stops before starting anything
    _, status, logs = jobs["refused"]
    unshared = jobs["tmp"] / "unshared"
    assert status == "FAILED"
    assert f"error: --storage-path: {unshared} is on " in logs and "--allow-local" in logs
    assert not unshared.exists()

