"""The run hierarchy: experiments, and the runs distfair creates, finds again and closes.

An experiment holds ``distfair run``'s configuration (parent) runs with one child run per seed,
``distfair sweep``'s sweep runs above the configuration runs of their trials, and the analysis
and report runs of ``distfair analyze`` and ``distfair report``. Runs are found again by their
tags (a resumed sweep, a retried seed) rather than created twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mlflow.entities import Param, RunTag

from distfair.tracking.client import _client
from distfair.tracking.tags import (EXPERIMENT_KIND, REPORT_TAGS, TAG_DESCRIPTION, TAG_EXPERIMENT_KIND,
                                    TAG_PARENT, TAG_ROLE, TAG_SEED)
from distfair.tracking.writes import _log, _log_texts, _metrics, _param_value


# ---------------------------------------------------------------- experiments and configurations
def prepare_experiment(uri: str, name: str) -> str:
    """Create the store and the experiment (if needed) in this process, before any worker
    writes: several processes creating a fresh SQLite store at once fail (ray.md).

    The experiment is marked a model training experiment (``mlflow.experimentKind``), also an
    existing one without a type (recorded by an older distfair); a type someone chose is kept."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or choose another --experiment")
        if TAG_EXPERIMENT_KIND not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return experiment.experiment_id
    return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})


def next_run_name(uri: str, experiment_id: str, base: str, config_hash: str) -> str:
    """``base`` for the first configuration run of a configuration, ``base #2``, ``#3``, ...
    for the next ones (runs tagged ``distfair.config_hash`` with this name or a numbered one,
    deleted runs included so a number is never given twice). A counter rather than a
    timestamp: short, ordered, and the same for the same history."""
    from mlflow.entities import ViewType

    runs = _client(uri).search_runs([experiment_id], filter_string=f"tags.`distfair.config_hash` = '{config_hash}'",
                                    run_view_type=ViewType.ALL, max_results=10000)
    taken = [0]
    for run in runs:
        name = run.info.run_name or ""
        if name == base:
            taken.append(1)
        elif name.startswith(f"{base} #") and name[len(base) + 2:].isdigit():
            taken.append(int(name[len(base) + 2:]))
    number = max(taken) + 1
    return base if number == 1 else f"{base} #{number}"


def start_parent_run(uri: str, experiment_id: str, flat_config: dict, *, run_name: str,
                     tags: dict[str, str] | None = None, lookup: dict[str, str] | None = None,
                     description: str | None = None, files: dict[str, str] | None = None) -> str:
    """A configuration's parent run. With ``lookup`` tags, an existing active run carrying them
    is reused (a resumed sweep); otherwise a new run is created with ``tags``, the params and
    the text artifacts ``files`` (``{"config.yaml": ...}``). ``description``: the run's MLflow
    description (the UI's "Description", tag ``mlflow.note.content``)."""
    client = _client(uri)
    if lookup:
        found = find_runs(uri, experiment_id, lookup)
        if found:
            client.update_run(found[0], status="RUNNING")
            return found[0]
    all_tags = {TAG_ROLE: "configuration", **(tags or {}), **(lookup or {})}
    if description:
        all_tags[TAG_DESCRIPTION] = description
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    _log(client, run.info.run_id, params=[Param(k, _param_value(v)) for k, v in sorted(flat_config.items())])
    _log_texts(client, run.info.run_id, files or {})
    return run.info.run_id


def find_runs(uri: str, experiment_id: str, tags: dict[str, str]) -> list[str]:
    """Ids of the active runs carrying all ``tags`` (oldest first)."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = _client(uri).search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"],
                                    max_results=1000)
    return [r.info.run_id for r in runs]


def seed_run_states(uri: str, experiment_id: str, parent_run_id: str) -> dict[int, tuple[str, str]]:
    """``{seed: (run_id, status)}`` of the active child runs of a parent."""
    runs = _client(uri).search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                                    max_results=10000)
    return {int(r.data.tags[TAG_SEED]): (r.info.run_id, r.info.status) for r in runs if TAG_SEED in r.data.tags}


def reopen_run(uri: str, run_id: str) -> str:
    """A configuration run taken up again by ``distfair run --resume``: RUNNING until its new
    summary closes it (a KILLED run would keep that status). Returns its name."""
    client = _client(uri)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "distfair.resumed", "true")
    return client.get_run(run_id).info.run_name or run_id


def retag_run(uri: str, run_id: str, tags: dict[str, str], *, run_name: str | None = None) -> None:
    """Set ``tags`` on a run (and rename it): a configuration run a resumed sweep's trial takes over."""
    client = _client(uri)
    _log(client, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if run_name is not None:
        client.update_run(run_id, name=run_name)


#: the tag of a retired run (redone after an interruption), and where a detached one keeps the
#: tags it was found by
TAG_RETIRED, TAG_RETIRED_FROM = "distfair.retired", "distfair.retired_from"


def retire_run(uri: str, run_id: str) -> None:
    """An unfinished run about to be redone: marked KILLED (if it was left open) and then
    deleted, so every (configuration, seed) keeps exactly one active run.

    A tracking server that does not let this account delete runs (MLflow's auth app gives a
    team's EDIT account no delete, docs/operations/threat-model.md) gets the run *detached*
    instead, which EDIT allows: the tags distfair finds runs by (``mlflow.parentRunId`` and every
    ``distfair.*`` tag: role, seed, the sweep's and trial's lookup tags) are deleted, their values
    kept as JSON in ``distfair.retired_from``, so no query of distfair finds it again. It stays in
    the experiment as a top-level KILLED run tagged ``distfair.retired``."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, "KILLED")
    client.set_tag(run_id, TAG_RETIRED, "redone after an interruption")
    try:
        client.delete_run(run_id)
    except MlflowException as err:
        if err.error_code != "PERMISSION_DENIED":
            raise
        _detach(client, run_id)


def _detach(client, run_id: str) -> None:
    import json

    tags = client.get_run(run_id).data.tags
    found_by = {k: v for k, v in sorted(tags.items())
                if (k == TAG_PARENT or k.startswith("distfair.")) and k not in (TAG_RETIRED, TAG_RETIRED_FROM)}
    client.set_tag(run_id, TAG_RETIRED_FROM, json.dumps(found_by)[:5000])
    for key in found_by:
        client.delete_tag(run_id, key)


def get_or_create_seed_run(uri: str, experiment_id: str, parent_run_id: str, seed: int, *,
                           run_name: str | None = None, tags: dict[str, str] | None = None,
                           params: dict | None = None, files: dict[str, str] | None = None) -> str:
    """The child run of ``seed`` under ``parent_run_id``: found by tag if it exists (a retry),
    otherwise created with the tags ``mlflow.parentRunId``, ``distfair.seed``,
    ``distfair.role=seed`` plus ``tags``, the param ``seed`` plus ``params`` and the text
    artifacts ``files``. Never two runs for one (parent, seed)."""
    client = _client(uri)
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_SEED}` = '{seed}'"), max_results=2)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name or f"seed={seed}", tags={
        **(tags or {}), TAG_PARENT: parent_run_id, TAG_SEED: str(seed), TAG_ROLE: "seed"})
    values = {**(params or {}), "seed": seed}
    _log(client, run.info.run_id, params=[Param(k, _param_value(v)) for k, v in sorted(values.items())])
    _log_texts(client, run.info.run_id, files or {})
    return run.info.run_id


def mark_runs(uri: str, run_ids: Iterable[str], status: str) -> None:
    """Close runs that are still open with ``status`` (FAILED or KILLED); finished ones stay."""
    client = _client(uri)
    for run_id in run_ids:
        run = client.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run_id, status)


# ------------------------------------------------------------------------------- sweeps
def start_sweep_run(uri: str, experiment_id: str, *, name: str, params: dict, lookup: dict[str, str]) -> str:
    """The top run of a sweep (found again by ``lookup`` tags on --resume)."""
    found = find_runs(uri, experiment_id, lookup)
    client = _client(uri)
    if found:
        client.update_run(found[0], status="RUNNING")
        return found[0]
    run = client.create_run(experiment_id, run_name=name, tags={TAG_ROLE: "sweep", **lookup})
    _log(client, run.info.run_id, params=[Param(k, _param_value(v)) for k, v in sorted(params.items())])
    return run.info.run_id


def log_sweep_outcome(uri: str, sweep_run_id: str, *, best: dict | None, metrics: dict[str, float | None],
                      artifacts: list[Path], status: str) -> None:
    """Best configuration (params prefixed ``best.``), sweep-level metrics, files, final status."""
    client = _client(uri)
    if best:
        _log(client, sweep_run_id, params=[Param(f"best.{k}", _param_value(v)) for k, v in sorted(best.items())])
    _log(client, sweep_run_id, metrics=_metrics(metrics))
    for path in artifacts:
        client.log_artifact(sweep_run_id, str(path))
    client.set_terminated(sweep_run_id, status)


def close_trial_runs(uri: str, experiment_id: str, sweep_run_id: str, trial_id: str, status: str,
                     reason: str) -> None:
    """A trial ended without closing its runs (stopped early, or its process was killed):
    close its configuration run and open seed runs with ``status`` and say why."""
    client = _client(uri)
    for parent in find_runs(uri, experiment_id, {"distfair.sweep_run": sweep_run_id, "distfair.trial_id": trial_id}):
        children = [run_id for run_id, _ in seed_run_states(uri, experiment_id, parent).values()]
        for run_id in [*children, parent]:
            if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                client.set_tag(run_id, "distfair.closed_because", reason)
                client.set_terminated(run_id, status)


# ------------------------------------------------------------ analyses and reports
def log_analysis_run(uri: str, experiment_id: str, *, run_name: str, params: dict, metrics: dict[str, float],
                     tags: dict[str, str], artifacts: list[Path]) -> str:
    """One FINISHED analysis run (tags ``distfair.kind=analysis``, ``distfair.role=analysis``
    plus ``tags``) with params, finite metrics and files; returns its id."""
    client = _client(uri)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"distfair.kind": "analysis", TAG_ROLE: "analysis", **tags})
    run_id = run.info.run_id
    try:
        _log(client, run_id, metrics=_metrics(metrics),
             params=[Param(k, _param_value(v)) for k, v in sorted(params.items())])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_report(uri: str, experiment_id: str, files: list[Path], figures: list[Path], *,
               sweep_run_id: str | None = None, run_name: str, params: dict, tags: dict[str, str],
               description: str | None = None) -> tuple[str, str | None]:
    """Log a report's ``files`` (``report.html``, ``report.md``, ``tables.csv``,
    ``tables.json``) and its ``figures`` (under ``figures/``). With ``sweep_run_id`` into that
    sweep run under the artifact folder ``report/`` (its status is left as it is); otherwise
    as a new FINISHED report run in the experiment (tags ``distfair.kind=report``,
    ``distfair.role=report`` plus ``tags``; the params; ``description`` as its MLflow
    description), at the artifact root. Returns (run id, artifact folder or None for the root)."""
    client = _client(uri)

    def upload(run_id: str, folder: str | None) -> None:
        for path in files:
            client.log_artifact(run_id, str(path), folder)
        for path in figures:
            client.log_artifact(run_id, str(path), f"{folder}/figures" if folder else "figures")

    if sweep_run_id:
        upload(sweep_run_id, "report")
        return sweep_run_id, "report"
    all_tags = {**REPORT_TAGS, **tags}
    if description:
        all_tags[TAG_DESCRIPTION] = description[:5000]
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    try:
        _log(client, run_id, params=[Param(k, _param_value(v)) for k, v in sorted(params.items())])
        upload(run_id, None)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id, None
