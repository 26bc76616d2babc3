"""Whether runs are finished and recorded, for ``distfair gc``: the reads that decide whether a
folder of the storage may be removed. Anything not positively known to be FINISHED with its
checkpoint artifact logged is reported with the reason it is kept."""
from __future__ import annotations

import re

from mlflow.entities import ViewType

from distfair.tracking.client import _client
from distfair.tracking.runs import seed_run_states

#: the final checkpoint a seed run logs (``SeedRunLogger``: the artifact ``checkpoint/last.pt``)
CHECKPOINT_ARTIFACT = "checkpoint/last.pt"
_HEX = re.compile(r"^[0-9a-f]{1,32}$")


def _checkpoint_logged(client, run_id: str) -> bool:
    return any(f.path == CHECKPOINT_ARTIFACT for f in client.list_artifacts(run_id, "checkpoint"))


def _finished_and_recorded(client, run, what: str) -> str | None:
    if run.info.lifecycle_stage != "active":
        return f"{what} {run.info.run_id} is deleted"
    if run.info.status != "FINISHED":
        return f"{what} {run.info.run_id} is {run.info.status}"
    return None


def seed_items_recorded(uri: str, items: set[tuple[str, int]], *,
                        parked: set[str] = frozenset()) -> dict[tuple[str, int], str | None]:
    """For each ``(parent run id prefix, seed)`` (the item of a slot's checkpoint,
    ``distfair-<prefix>-<attempt>/seed<n>``): None when the configuration run whose id starts
    with the prefix is FINISHED and its seed run is FINISHED with ``checkpoint/last.pt`` logged;
    otherwise why not (unknown, ambiguous, running, failed, no checkpoint, or writes of either run
    parked under ``unlogged/``: ``parked`` holds those folders' names, run ids)."""
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    parents: dict[str, object | str] = {}
    out: dict[tuple[str, int], str | None] = {}
    for prefix, seed in sorted(items):
        if prefix not in parents:
            parents[prefix] = _parent(client, experiments, prefix, uri)
        parent = parents[prefix]
        if isinstance(parent, str):
            out[(prefix, seed)] = parent
            continue
        reason = _finished_and_recorded(client, parent, "configuration run")
        if reason is None:
            child = seed_run_states(uri, parent.info.experiment_id, parent.info.run_id).get(seed)
            if child is None:
                reason = f"configuration run {parent.info.run_id} has no seed run for seed {seed}"
            elif child[1] != "FINISHED":
                reason = f"seed run {child[0]} (seed {seed}) is {child[1]}"
            elif not _checkpoint_logged(client, child[0]):
                reason = f"seed run {child[0]} (seed {seed}) has no {CHECKPOINT_ARTIFACT} logged"
            elif parked & {child[0], parent.info.run_id}:
                reason = "writes of its runs are parked in unlogged/: run distfair relog first"
        out[(prefix, seed)] = reason
    return out


def _parent(client, experiments: list[str], prefix: str, uri: str):
    """The one run whose id starts with ``prefix``, or why there is none."""
    if not _HEX.match(prefix) or not experiments:
        return f"no MLflow run {prefix}... in {uri}"
    runs = client.search_runs(experiments, filter_string=f"attributes.run_id LIKE '{prefix}%'",
                              run_view_type=ViewType.ALL, max_results=2)
    if not runs:
        return f"no MLflow run {prefix}... in {uri}"
    if len(runs) > 1:
        return f"more than one MLflow run starts with {prefix}"
    return runs[0]


def runs_recorded(uri: str, run_ids: set[str], *, parked: set[str] = frozenset()) -> dict[str, str | None]:
    """For each run id (a cached checkpoint's source run): None when the run is FINISHED with
    ``checkpoint/last.pt`` logged (the cache can be downloaded again), otherwise why not."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    out: dict[str, str | None] = {}
    for run_id in sorted(run_ids):
        try:
            run = client.get_run(run_id)
        except MlflowException:
            out[run_id] = f"no MLflow run {run_id} in {uri}"
            continue
        reason = _finished_and_recorded(client, run, "run")
        if reason is None and not _checkpoint_logged(client, run_id):
            reason = f"run {run_id} has no {CHECKPOINT_ARTIFACT} logged"
        if reason is None and run_id in parked:
            reason = f"writes of run {run_id} are parked in unlogged/: run distfair relog first"
        out[run_id] = reason
    return out
