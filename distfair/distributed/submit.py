"""Running distfair on a cluster without logging into it: ``distfair submit`` sends a
``distfair run`` or ``distfair sweep`` command as a Ray Job (Ray's own
``JobSubmissionClient``), with the working directory shipped in the job's runtime
environment; and the refusal of node-local paths when a command joins a cluster.

What counts as shared (checked by :func:`node_local_problems`):

- tracking: any MLflow URI that is neither a file on this node (``sqlite:``, ``file:`` or a
  bare path) nor a server on a loopback address. A ``sqlite:///`` database on a network file
  system is refused too: SQLite's locking is unreliable there, and MLflow's server is the
  supported way to share a store.
- storage (``--storage-path``): a path whose mount, as listed in ``/proc/mounts`` on the node
  that runs the check, has a network or cluster file system type (:data:`SHARED_FS_TYPES`).
  distfair lists and reads that folder itself (sweep attempts, ``init_from`` downloads), so an
  object-store URI (``s3://``, ``gs://``) is refused with that reason. Nothing else is
  guessed: a local disk mounted at the same path on every node, or a file system missing
  from the list, is the user's to assert with ``--allow-local``.

``distfair submit`` checks what it can from the submitting machine (tracking URI, a storage
path given at all, absolute paths); the job's own ``distfair run --address auto`` then
checks the storage path's mount on the head, where the driver runs.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import urlparse

#: file system types (``/proc/mounts``) whose files every node that mounts them sees alike
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs",
    "ocfs2", "gfs2", "panfs", "wekafs", "orangefs", "pvfs2", "afs",
    "fuse.glusterfs", "fuse.ceph-fuse", "fuse.cephfs", "fuse.juicefs", "fuse.gcsfuse", "fuse.s3fs",
    "fuse.mountpoint-s3", "fuse.goofys", "fuse.sshfs",
})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})

#: files that hold credentials, at any depth (gitignore syntax, as Ray matches ``excludes``):
#: environment files, Ray's token file, TLS keys, cloud and Kubernetes credentials. Never
#: shipped with a job (whose working directory any user of the cluster may read in Ray's
#: temporary folder); ``.gitignore`` and the ``.dockerignore`` files list the same
#: (tests/test_submit.py checks all of them).
SECRET_EXCLUDES = (
    ".env", ".env.*", "auth_token", "*.pem", "*.key", ".aws/", "credentials.json", "*service-account*.json",
    "gcloud/", ".config/gcloud/", "kubeconfig", ".kube/",
)

#: what ``distfair submit`` leaves out of the shipped working directory, on top of its
#: ``.gitignore`` (which Ray applies too). Anchored with "/" where a bare name would also
#: match a package folder (``distfair/report``, ``distfair/data``).
SUBMIT_EXCLUDES = (
    ".git", "/.venv", "/.venv-*", "/venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info",
    "/mlruns", "/mlartifacts", "/mlflow.db", "/mlflow.db-*", "/distfair_runs", "/distfair_analysis", "/report",
    "*.pt", *SECRET_EXCLUDES,
)

ALLOW_LOCAL_HINT = "or --allow-local if the cluster has a single node"


def joins_cluster(address: str | None, environ: dict | None = None) -> bool:
    """Whether a command joins an existing cluster: ``--address``, ``RAY_ADDRESS``, or it is
    the driver of a Ray Job (the job supervisor sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and
    ``RAY_ADDRESS`` for it, ``ray/dashboard/modules/job/job_supervisor.py``)."""
    env = os.environ if environ is None else environ
    return bool(address or env.get("RAY_ADDRESS") or env.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def mount_of(path: str | Path, mounts_file: str | Path = "/proc/mounts") -> tuple[str, str] | None:
    """(mount point, file system type) holding ``path`` (symlinks of its existing part
    resolved), from a ``/proc/mounts``-format file; None where there is none (not Linux)."""
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return None
    target = Path(path).resolve()
    best = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...)
        point = fields[1].encode().decode("unicode_escape")
        if (target == Path(point) or Path(point) in target.parents) and (best is None or len(point) > len(best[0])):
            best = (point, fields[2])
    return best


def tracking_problem(uri: str) -> str | None:
    """Why an MLflow tracking URI is visible to this node only, or None."""
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme in ("", "file") or scheme.startswith("sqlite"):
        return (f"--tracking-uri: {uri} is a file on this node; on a multi-node cluster the rank-0 worker of each "
                "seed run writes to its own node's copy. Pass --tracking-uri https://MLFLOW_HOST (a tracking "
                f"server every node reaches, see cluster/mlflow/) {ALLOW_LOCAL_HINT}")
    host = urlparse(uri).hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return (f"--tracking-uri: {uri} is a loopback address, which each node resolves to itself. Pass "
                f"--tracking-uri https://MLFLOW_HOST with an address every node reaches {ALLOW_LOCAL_HINT}")
    return None


def storage_problem(storage_path: str, mounts_file: str | Path = "/proc/mounts") -> str | None:
    """Why a storage path is not shared by every node, or None (see the module docstring)."""
    if "://" in storage_path:
        return (f"--storage-path: {storage_path} is a URI; distfair lists and reads the storage folder itself, so it "
                "must be a file system path mounted on every node (NFS, EFS, Filestore, Lustre, CephFS, or an "
                "object store mounted with a FUSE client such as gcsfuse or mountpoint-s3)")
    mount = mount_of(storage_path, mounts_file)
    if mount is not None and mount[1] in SHARED_FS_TYPES:
        return None
    where = f"on {mount[0]} ({mount[1]})" if mount else "on a file system this node could not identify"
    return (f"--storage-path: {storage_path} is {where}, which other nodes do not see; checkpoints and sweep state "
            "would be split across nodes. Pass --storage-path on a network file system mounted at the same path on "
            f"every node (NFS, EFS, Filestore, Lustre, CephFS; cluster/README.md) {ALLOW_LOCAL_HINT} or the path is "
            "shared in a way distfair does not recognise")


def node_local_problems(tracking_uri: str, storage_path: str, mounts_file: str | Path = "/proc/mounts") -> list[str]:
    """The reasons (one line each) why a command joining a cluster would write to one node only."""
    return [p for p in (tracking_problem(tracking_uri), storage_problem(storage_path, mounts_file)) if p]


def submit_problems(tracking_uri: str | None, storage_path: str | None, *, allow_local: bool) -> list[str]:
    """What ``distfair submit`` can tell from the submitting machine. A job runs in a
    temporary copy of the working directory that Ray deletes later, so a relative or default
    tracking store or storage path would be lost even on one node; the storage path's mount
    is checked by the job itself, on the head."""
    problems = []
    if not tracking_uri:
        problems.append("--tracking-uri: missing; the default sqlite:///mlflow.db would be written inside the job's "
                        "temporary copy of the working directory. Pass --tracking-uri https://MLFLOW_HOST (or set "
                        "MLFLOW_TRACKING_URI)")
    elif _relative_store(tracking_uri):
        problems.append(f"--tracking-uri: {tracking_uri} is relative, so it would land in the job's temporary copy "
                        "of the working directory. Pass --tracking-uri https://MLFLOW_HOST")
    elif not allow_local and (problem := tracking_problem(tracking_uri)):
        problems.append(problem)
    if not storage_path:
        problems.append("--storage-path: missing; the default ./distfair_runs would be inside the job's temporary "
                        "copy of the working directory. Pass --storage-path on a file system every node mounts, "
                        "e.g. --storage-path /mnt/distfair/runs")
    elif "://" not in storage_path and not Path(storage_path).is_absolute():
        problems.append(f"--storage-path: {storage_path} is relative, so it would land in the job's temporary copy of "
                        "the working directory. Pass an absolute path on a file system every node mounts")
    elif "://" in storage_path:
        problems.append(storage_problem(storage_path))
    return problems


def _relative_store(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return not uri.startswith("sqlite:////")
    return "://" not in uri and not Path(uri).is_absolute()


def job_entrypoint(command: str, config: str, options: list[str], tracking_uri: str | None) -> str:
    """The shell command a job's driver runs: ``distfair COMMAND CONFIG OPTIONS`` joining its
    own cluster (``--address auto``), with the tracking URI spelled out when it came from the
    submitting machine's ``MLFLOW_TRACKING_URI``."""
    argv = ["distfair", command, config]
    skip = False
    for option in options:
        if skip:
            skip = False
            continue
        if option == "--address":
            skip = True
            continue
        if not option.startswith("--address="):
            argv.append(option)
    argv += ["--address", "auto"]
    if tracking_uri and not any(o == "--tracking-uri" or o.startswith("--tracking-uri=") for o in options):
        argv += ["--tracking-uri", tracking_uri]
    return shlex.join(argv)


#: how ``ray job stop`` ends the job's driver: Ray's job supervisor (which runs in the job's
#: runtime env) sends this signal, waits this many seconds, then SIGKILLs (Ray's default wait is
#: 3 s). distfair handles SIGTERM as Ctrl-C (its open runs are marked KILLED, exit 143), which
#: needs a few seconds with a remote tracking server.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGTERM", "RAY_JOB_STOP_WAIT_TIME_S": "60"}


def runtime_env(working_dir: str | Path) -> dict:
    """The job's runtime environment: this working directory, without virtual environments,
    local results or caches, and the stop signal and grace period (:data:`STOP_ENV`). No other
    environment variables: credentials (MLflow's, the Ray token) come from the nodes' own
    environment, never through the job's recorded runtime env."""
    return {"working_dir": str(Path(working_dir).resolve()), "excludes": list(SUBMIT_EXCLUDES),
            "env_vars": dict(STOP_ENV)}


def submit_job(address: str, entrypoint: str, working_dir: str | Path, metadata: dict[str, str]) -> str:
    """Submit through Ray's ``JobSubmissionClient`` (the dashboard at ``address``; token auth
    from ``RAY_AUTH_MODE`` and the token as Ray reads it) and return the job's submission id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(working_dir), metadata=metadata)


def follow_commands(job_id: str, address: str) -> dict[str, str]:
    prefix = "RAY_AUTH_MODE=token " if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else ""
    where = shlex.quote(address)
    return {"logs": f"{prefix}ray job logs --follow {job_id} --address {where}",
            "status": f"{prefix}ray job status {job_id} --address {where}",
            "stop": f"{prefix}ray job stop {job_id} --address {where}"}
