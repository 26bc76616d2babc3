"""Writes the tracking server never received: kept on disk, logged later by ``distfair relog``.

A seed run's writes wait in its buffer (``distfair.tracking.buffer``) and are parked under
``<storage>/unlogged/<run id>/`` when the server stays away; the driver's open runs are closed
there too (:func:`park_open_runs`). :func:`relog` replays them, in order, into the store.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from distfair.tracking import buffer as tracking_buffer
from distfair.tracking.client import _open_runs, _RetryingClient, _transient


def unlogged_root(storage_path: str | Path) -> Path:
    """Where runs whose writes could not be logged are kept: ``<storage>/unlogged``."""
    return Path(storage_path) / tracking_buffer.UNLOGGED


def relog_command(folder: str | Path, uri: str) -> str:
    return f"distfair relog {shlex.quote(str(folder))} --tracking-uri {shlex.quote(uri)}"


def park_open_runs(uri: str, storage_path: str | Path, reason: str) -> str:
    """After :class:`TrackingUnavailable` in the driver: every run this process opened and did
    not close is closed FAILED with ``reason`` (tag ``distfair.closed_because``) if the server
    answers now, else that closing is kept under ``<storage>/unlogged/<run id>/`` (beside
    what a worker kept there). Returns the message for the user: what happened, where the
    results are and the relog command."""
    root = unlogged_root(storage_path)
    for run_id in list(_open_runs.get(uri, {})):
        op = {"op": "close", "status": "FAILED", "reason": reason[:5000]}
        try:
            _apply_op(MlflowClient(tracking_uri=uri), run_id, root / run_id, op)
            _open_runs[uri].pop(run_id, None)
            continue
        except Exception as err:  # noqa: BLE001 - the server is still away: kept for relog
            if not _transient(err):
                raise
        buffer = tracking_buffer.WriteBuffer(root / run_id, 1)
        buffer.append(op)
        buffer.park({"run_id": run_id, "tracking_uri": uri, "reason": reason})
    parked = tracking_buffer.parked_folders(root)
    if not parked:
        return f"{reason}; runs closed as FAILED"
    return (f"{reason}; the results not logged ({len(parked)} run(s)) are kept in {root}; once the server is "
            f"back, log them with: {relog_command(root, uri)}")


def _apply_op(client: MlflowClient, run_id: str, folder: Path, op: dict) -> None:
    """One buffered or parked write (``distfair.tracking.buffer``) into ``run_id``."""
    kind = op["op"]
    if kind == "batch":
        client.log_batch(run_id, metrics=[Metric(*m) for m in op.get("metrics", [])],
                         params=[Param(*p) for p in op.get("params", [])],
                         tags=[RunTag(*t) for t in op.get("tags", [])])
    elif kind == "artifact":
        client.log_artifact(run_id, str(tracking_buffer.parked_file(folder, op)), op.get("artifact_path"))
    elif kind == "artifacts":
        client.log_artifacts(run_id, str(tracking_buffer.parked_file(folder, op)), op.get("artifact_path"))
    elif kind == "status":
        client.set_terminated(run_id, op["status"])
    elif kind == "close":           # the driver gave up: close the run unless its worker finished it
        if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            client.set_tag(run_id, "distfair.closed_because", op["reason"])
            client.set_terminated(run_id, op["status"])
    else:
        raise ValueError(f"unknown tracking write {kind!r}")


def relog(folder: str | Path, uri: str, log: Callable[[str], None]) -> list[str]:
    """``distfair relog``: log the writes kept under ``folder`` (``<storage>/unlogged`` or one
    run's folder in it) into ``uri``, in their order, each folder deleted once all of it is
    logged; a relog interrupted again resumes after the writes already logged. Returns the
    run ids. Raises LookupError when there is nothing to log or a folder names a file outside
    itself (:func:`~distfair.tracking.buffer.check_parked_files`), TrackingUnavailable when the
    server does not answer."""
    import shutil

    folders = tracking_buffer.parked_folders(folder)
    if not folders:
        raise LookupError(f"{folder}: no results waiting to be logged here (folders with "
                          f"{tracking_buffer.RUN_INFO}, as `distfair run` keeps under <storage>/unlogged)")
    parked = {run_folder: tracking_buffer.read_parked(run_folder) for run_folder in folders}
    for run_folder, (_, ops, _) in parked.items():     # every file checked before anything is written
        tracking_buffer.check_parked_files(run_folder, ops)
    client = _RetryingClient(uri, log=log)
    done_ids = []
    for run_folder, (info, ops, done) in parked.items():
        run_id = info["run_id"]
        client.get_run(run_id)           # an unknown run (another store?) stops here, nothing written
        for index in range(done, len(ops)):
            _apply_op(client, run_id, run_folder, ops[index])
            tracking_buffer.mark_replayed(run_folder, index + 1)
        status = client.get_run(run_id).info.status
        log(f"run {run_id}: {len(ops) - done} write(s) logged, status {status}")
        shutil.rmtree(run_folder)
        done_ids.append(run_id)
    return done_ids
