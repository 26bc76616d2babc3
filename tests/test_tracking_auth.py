"""The tracking server recipe, `cluster/mlflow/serve.sh`, run for real: MLflow on a throwaway
PostgreSQL with its basic-auth login on. An anonymous client or a wrong password is refused (401);
a team's account made by `cluster/mlflow/add_user.sh` has EDIT on its experiment only: it logs a
run (a metric, a parameter, an artifact) and reads it back, through distfair's own client too,
but deletes nothing and sees no other experiment. The script refuses a weak or missing admin
password or secret key before anything starts (exit 2, one line), and keeps its auth settings in
a private file. One server for the module (some 10 to 30 s to start on a busy 2-core machine)."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "cluster" / "mlflow" / "serve.sh"
ADD_USER = ROOT / "cluster" / "mlflow" / "add_user.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's and libpq's settings, with the interpreter
    running the tests first on PATH (the scripts call `python` and `mlflow`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **extra}


# --- a throwaway PostgreSQL

def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def throwaway_postgres():
    """A PostgreSQL cluster of its own in /tmp (a free port, password auth, unix socket inside
    it), run as a non-root user, removed after. Absent binaries or psycopg2 skip the test, except
    under CI=true, where .ci/run installs them."""
    import pwd

    bindir = _postgres_bin()
    try:
        import psycopg2  # noqa: F401 - the server's driver
    except ImportError:
        bindir = None
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL (initdb) or psycopg2 missing under CI: .ci/run installs postgresql, "
                        "pip installs psycopg2-binary (dev extra)")
        pytest.skip("PostgreSQL (initdb) or psycopg2-binary not installed")
    # initdb refuses to run as root: use the Debian package's postgres user (or nobody)
    user = None
    if os.geteuid() == 0:
        user = next(n for n in ("postgres", "nobody") if _has_user(n))
    run_as = {} if user is None else {"user": user, "group": pwd.getpwnam(user).pw_gid}
    root = Path(tempfile.mkdtemp(prefix="dfpg", dir="/tmp"))
    password, port = secrets.token_hex(16), _free_port()
    (root / "pw").write_text(password)
    if user is not None:
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        os.chown(root / "pw", pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    data = root / "data"
    try:
        subprocess.run([bindir / "initdb", "-D", data, "-U", "distfair", "--auth=scram-sha-256",
                        f"--pwfile={root / 'pw'}", "--no-sync"], check=True, capture_output=True, **run_as)
        subprocess.run([bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, **run_as)
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "distfair", "PGPASSWORD": password}
        subprocess.run([bindir / "createdb", "mlflow"], check=True, capture_output=True, env={**os.environ, **env})
        yield {"bin": bindir, "env": {**env, "PGDATABASE": "mlflow"}}
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **run_as)
        shutil.rmtree(root, ignore_errors=True)


# --- one server for the module

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking_auth")
    with throwaway_postgres() as postgres:
        port = _free_port()
        admin_password, secret_key = secrets.token_urlsafe(24), secrets.token_hex(32)
        env = _clean_env(**postgres["env"], MLFLOW_ARTIFACTS_DESTINATION=str(tmp / "artifacts"),
                         MLFLOW_PORT=str(port), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                         MLFLOW_FLASK_SERVER_SECRET_KEY=secret_key, TMPDIR=str(tmp),
                         # MLflow's job runner (7 processes, for GenAI jobs distfair never starts)
                         # only slows starting and stopping on a 2-core machine
                         MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log_path = tmp / "server.log"
        log = open(log_path, "w")
        # MLFLOW_HOST is left unset: the server must listen on loopback by itself
        proc = subprocess.Popen(["bash", str(SERVE), "--workers", "1"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except urllib.error.HTTPError:
                    break                                      # up, and asking for a login
                except OSError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(1)
            found = re.search(r"auth settings in (\S+)", log_path.read_text())
            assert found, log_path.read_text()
            yield {"uri": uri, "admin": ("admin", admin_password), "secret_key": secret_key, "tmp": tmp,
                   "log": log_path, "ini": Path(found.group(1)), "postgres": postgres}
        finally:
            stop_process_group(proc, grace_s=60)
            log.close()
        # the settings file goes with the server
        assert not Path(found.group(1)).parent.exists(), log_path.read_text()[-3000:]


def _status(uri: str, path: str, credentials: tuple[str, str] | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(uri + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def test_anonymous_client_and_wrong_password_are_refused(server):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = server["uri"]
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    create = b'{"name": "anonymous"}'
    assert _status(uri, search) == 401
    assert _status(uri, "/api/2.0/mlflow/experiments/create", body=create) == 401
    assert _status(uri, search, ("admin", "password1234")) == 401
    assert _status(uri, search, ("admin", server["admin"][1] + "x")) == 401
    assert _status(uri, search, server["admin"]) == 200               # the login works: not refusing all
    # MLflow's own client, with no MLFLOW_TRACKING_USERNAME/_PASSWORD in this process's environment
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} & set(os.environ)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(tracking_uri=uri).create_experiment("anonymous")


def test_team_account_with_edit_logs_a_run_and_reads_it_back(server, monkeypatch, tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from distfair.tracking.runs import prepare_experiment

    uri, (admin, admin_password) = server["uri"], server["admin"]
    team_password = secrets.token_urlsafe(18)
    admin_env = _clean_env(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=admin,
                           MLFLOW_TRACKING_PASSWORD=admin_password, MLFLOW_NEW_USER_PASSWORD=team_password)
    made = subprocess.run(["bash", str(ADD_USER), "team-a", "team-a-digits"], env=admin_env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "created user team-a" in made.stdout and "team-a: EDIT on experiment team-a-digits" in made.stdout
    assert team_password not in made.stdout + made.stderr
    # again: idempotent, the grant stays EDIT
    again = subprocess.run(["bash", str(ADD_USER), "team-a", "team-a-digits"], env=admin_env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "user team-a exists" in again.stdout, again.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
    other = MlflowClient(tracking_uri=uri).create_experiment("admin-only")

    # the team's account, from the environment as on the nodes
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team-a")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_password)
    experiment_id = prepare_experiment(uri, "team-a-digits")          # distfair's own client (tags it)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id, run_name="seed-0")
    client.log_batch(run.info.run_id, metrics=[Metric("clean_acc", 0.9, 0, 0)], params=[Param("train.epochs", "1")])
    client.log_metric(run.info.run_id, "robust_acc", 0.5, step=1)
    (tmp_path / "note.txt").write_text("a checkpoint would go here")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    stored = client.get_run(run.info.run_id)
    assert stored.data.metrics == {"clean_acc": 0.9, "robust_acc": 0.5} and stored.info.status == "FINISHED"
    assert stored.data.params == {"train.epochs": "1"}
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert list((server["tmp"] / "artifacts").rglob("note.txt"))       # proxied to the artifact destination

    # EDIT, not more: no deleting, no other experiment, no user management
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        client.delete_run(run.info.run_id)
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        client.get_experiment(other)
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        client.create_run(other)
    assert _status(uri, "/api/2.0/mlflow/users/create", ("team-a", team_password),
                   body=b'{"username": "mallory", "password": "0123456789abcdefgh"}') == 403

    # ...and the run is a row in PostgreSQL, not in a file beside the server
    rows = subprocess.run([server["postgres"]["bin"] / "psql", "-tAc", "select name, status from runs"], check=True,
                          capture_output=True, text=True, env={**os.environ, **server["postgres"]["env"]}).stdout
    assert rows.split() == ["seed-0|FINISHED"]

    # a resume redoes an unfinished seed run: the EDIT account cannot delete it, so distfair
    # detaches it (no query finds it again) and the seed gets a new run
    from distfair import tracking

    parent = tracking.start_parent_run(uri, experiment_id, {"train.epochs": 1}, run_name="config",
                                       lookup={"distfair.sweep_name": "s"})
    first = tracking.get_or_create_seed_run(uri, experiment_id, parent, 0)
    assert tracking.seed_run_states(uri, experiment_id, parent) == {0: (first, "RUNNING")}
    tracking.retire_run(uri, first)
    assert tracking.seed_run_states(uri, experiment_id, parent) == {}
    second = tracking.get_or_create_seed_run(uri, experiment_id, parent, 0)
    assert second != first and tracking.seed_run_states(uri, experiment_id, parent) == {0: (second, "RUNNING")}
    old = client.get_run(first)
    assert old.info.status == "KILLED" and old.info.lifecycle_stage == "active"        # kept, not deleted
    assert old.data.tags["distfair.retired"] and json.loads(old.data.tags["distfair.retired_from"]) == {
        "distfair.role": "seed", "distfair.seed": "0", "mlflow.parentRunId": parent}
    assert not {"distfair.role", "distfair.seed", "mlflow.parentRunId"} & set(old.data.tags)


def test_auth_settings_are_a_private_file_without_the_secrets(server):
    ini = server["ini"]
    assert ini.is_file() and ini.parent.parent == server["tmp"]          # under TMPDIR
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    text = ini.read_text()
    assert "default_permission = NO_PERMISSIONS" in text and "admin_username = admin" in text
    assert server["admin"][1] not in text and server["secret_key"] not in text
    assert server["postgres"]["env"]["PGPASSWORD"] not in text
    # ...nor anywhere in what the server printed
    log = server["log"].read_text()
    assert server["admin"][1] not in log and server["secret_key"] not in log
    assert "listening on" not in log                                     # loopback: no plain-HTTP warning


# --- refusals before anything starts

GOOD_PASSWORD, GOOD_KEY = "correct horse battery staple", "k" * 40


@pytest.mark.parametrize("settings, args, message", [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": None}, [], "set MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, [], "set MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "password1234"}, [], "MLflow's old default password"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short-secret"}, [], "shorter than 16 characters"),
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": None}, [], "set MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 20}, [], "MLFLOW_FLASK_SERVER_SECRET_KEY is shorter than 32"),
    ({"MLFLOW_AUTH_DEFAULT_PERMISSION": "EDIT"}, [], "must be NO_PERMISSIONS or READ"),
    ({"MLFLOW_AUTH_ADMIN_USERNAME": "admin\ndefault_permission = MANAGE"}, [], "MLFLOW_AUTH_ADMIN_USERNAME"),
    ({"MLFLOW_AUTH_DATABASE_URI": "postgresql://u:hunter2@db/auth"}, [], "carries a password"),
    ({}, ["--app-name", "basic-auth"], "--app-name: the login is always on"),
    ({}, ["--app-name="], "--app-name: the login is always on"),
])
def test_serve_refuses_a_weak_or_missing_login_in_one_line(tmp_path, settings, args, message):
    env = _clean_env(PGHOST="db.invalid", PGUSER="mlflow", PGPASSWORD="x", MLFLOW_ARTIFACTS_DESTINATION="s3://b/m",
                     MLFLOW_AUTH_ADMIN_PASSWORD=GOOD_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY=GOOD_KEY,
                     TMPDIR=str(tmp_path))
    for key, value in settings.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    done = subprocess.run(["bash", str(SERVE), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("serve.sh: ") and message in done.stderr
    for secret in ("password1234", "short-secret", "hunter2", GOOD_PASSWORD, GOOD_KEY, "k" * 20):
        assert secret not in done.stderr
    assert list(tmp_path.iterdir()) == []                                # no settings file written


def test_serve_refuses_missing_database_settings(tmp_path):
    done = subprocess.run(["bash", str(SERVE)], env=_clean_env(PGHOST="db"), capture_output=True, text=True)
    assert done.returncode == 2 and "set PGUSER" in done.stderr
    done = subprocess.run(["bash", str(SERVE)], capture_output=True, text=True,
                          env=_clean_env(PGHOST="db", PGUSER="u", MLFLOW_ARTIFACTS_DESTINATION="s3://b/m",
                                         HOME=str(tmp_path)))
    assert done.returncode == 2 and "set PGPASSWORD" in done.stderr


def test_add_user_refuses_missing_settings_and_the_admin_itself():
    done = subprocess.run(["bash", str(ADD_USER), "team-a"], env=_clean_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "usage: add_user.sh USER EXPERIMENT" in done.stderr
    done = subprocess.run(["bash", str(ADD_USER), "team-a", "e"], env=_clean_env(MLFLOW_TRACKING_URI="https://m"),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "admin's account" in done.stderr
    done = subprocess.run(["bash", str(ADD_USER), "admin", "e"], capture_output=True, text=True,
                          env=_clean_env(MLFLOW_TRACKING_URI="https://m", MLFLOW_TRACKING_USERNAME="admin",
                                         MLFLOW_TRACKING_PASSWORD="p"))
    assert done.returncode == 2 and "account of its own" in done.stderr
