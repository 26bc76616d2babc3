"""Refusals before anything starts: storage that cannot be written (a real probe write), and a
tracking store or storage path on this node's own disk for a command joining a cluster."""
from __future__ import annotations

import os
from pathlib import Path

from distfair.experiment.errors import Refused


def default_storage_path() -> str:
    return str(Path(os.getcwd(), "distfair_runs").resolve())


#: bytes the storage probe writes (and syncs): a full file system refuses them
STORAGE_PROBE_BYTES = 64 * 1024


def storage_problem(storage_path: str | Path) -> str | None:
    """Why the run's storage cannot be written (None when it can), found by a real write:
    the folder is created, a probe file of :data:`STORAGE_PROBE_BYTES` written, synced and
    removed. Permission bits alone say nothing for root, and only a write finds a full or
    read-only file system. A remote URI (``s3://``) is left to Ray's own file system layer.
    The probe leaves no trace: folders it had to create are removed again (a command refused
    later, e.g. for its ``init_from``, must leave the working directory as it found it)."""
    storage = str(storage_path)
    if "://" in storage and not storage.startswith("file://"):
        return None
    base = Path(storage[len("file://"):] if storage.startswith("file://") else storage).expanduser().absolute()
    created = [p for p in (base, *base.parents) if not p.exists()]      # deepest first
    probe = base / f".distfair-write-probe-{os.getpid()}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(os.urandom(STORAGE_PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        return f"storage path {base}: cannot write there ({err.strerror or err})"
    finally:
        for path in (probe, *created):
            try:
                path.unlink() if path == probe else path.rmdir()
            except OSError:
                pass
    return None


def refuse_node_local(address: str | None, allow_local: bool, tracking_uri: str, storage: str) -> None:
    """Raises :class:`Refused` (one line per problem, saying what to pass instead) when a
    command joining a cluster (``address``, or the driver of a Ray Job) would record its
    results where only this node sees them; ``distfair.distributed.submit`` says what counts
    as shared."""
    from distfair.distributed.submit import joins_cluster, node_local_problems

    if allow_local or not joins_cluster(address):
        return
    problems = node_local_problems(tracking_uri, storage)
    if problems:
        raise Refused(*problems)


def refuse_unwritable_storage(config_path: str, storage: str) -> None:
    """Raises :class:`Refused` naming the path and why when the storage path cannot be written
    (full, read-only, under a file): found by a real probe write before anything starts."""
    problem = storage_problem(storage)
    if problem:
        raise Refused(f"{config_path}: {problem}")


def refuse_storage(config_path: str, *, address: str | None, allow_local: bool, tracking_uri: str,
                   storage: str) -> None:
    """Both refusals, node-local first (then the storage is not probed)."""
    refuse_node_local(address, allow_local, tracking_uri, storage)
    refuse_unwritable_storage(config_path, storage)
