"""What distfair reads back from MLflow: the runs and values behind ``distfair run --resume``,
``init_from`` checkpoints, a sweep's choice, ``distfair analyze`` and ``distfair report``.

Reads only: nothing here writes into a run.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from distfair.results import record as result_record
from distfair.tracking.client import _client
from distfair.tracking.runs import seed_run_states
from distfair.tracking.tags import TAG_PARENT, TAG_ROLE, TAG_SEED, TAG_STOP_REASON


# ------------------------------------------------------------------ configurations and seeds
def latest_configuration_run(uri: str, experiment_id: str, *, config_hash: str, config_stem: str,
                             configuration: str | None = None) -> dict | None:
    """The newest active ``distfair run`` configuration run (not a sweep trial) of a
    configuration: same ``distfair.config_hash``, a ``distfair.config_file`` with the stem
    ``config_stem`` and the same ``distfair.configuration`` (None: a file without a
    ``configurations:`` block). ``{"run_id", "run_name", "status", "seeds", "seed_rule", "stop_reason"}``
    (``seeds``: its ``seeds`` param as a list, None if unreadable or adaptive; ``seed_rule``: an
    adaptive configuration's ``seeds.*`` params as logged, ``{"seeds.min": "3", ...}``, else
    None; ``stop_reason``: its tag ``distfair.seeds.stop_reason`` or None), or None when there is none."""
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'configuration' and "
                                       f"tags.`distfair.config_hash` = '{config_hash}'",
        order_by=["attributes.start_time DESC"], max_results=1000)
    for run in runs:
        tags = run.data.tags
        if TAG_PARENT in tags or "distfair.sweep_run" in tags:
            continue
        if Path(tags.get("distfair.config_file", "")).stem != config_stem:
            continue
        if tags.get("distfair.configuration") != configuration:
            continue
        try:
            seeds = [int(s) for s in json.loads(run.data.params.get("seeds", "null"))]
        except (TypeError, ValueError):
            seeds = None
        rule = {k: v for k, v in run.data.params.items() if k.startswith("seeds.")} or None
        return {"run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id,
                "status": run.info.status, "seeds": seeds, "seed_rule": rule,
                "stop_reason": tags.get(TAG_STOP_REASON)}
    return None


def finished_seed_metrics(uri: str, experiment_id: str, parent_run_id: str) -> dict[int, dict[str, float]]:
    """``{seed: {metric: latest value}}`` of the parent's FINISHED child runs.

    The parent's statistics are computed from what MLflow actually holds, so they always
    agree with the children a user sees (a seed whose group failed later still counts if its
    own run finished)."""
    client = _client(uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                              max_results=10000)
    return {int(r.data.tags[TAG_SEED]): dict(r.data.metrics) for r in runs
            if r.info.status == "FINISHED" and TAG_SEED in r.data.tags}


def finished_seed_records(uri: str, experiment_id: str, parent_run_id: str) -> dict[int, dict]:
    """``{seed: result record}`` (``result.json``) of the parent's FINISHED child runs that
    have one (runs recorded before the record existed have none and are left out)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                              max_results=10000)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            if r.info.status != "FINISHED" or TAG_SEED not in r.data.tags:
                continue
            try:
                path = client.download_artifacts(r.info.run_id, result_record.SEED_RECORD_NAME,
                                                 str(Path(tmp) / r.info.run_id))
            except (MlflowException, OSError):
                continue
            out[int(r.data.tags[TAG_SEED])] = json.loads(Path(path).read_text())
    return out


def seed_checkpoints(uri: str, run_id: str, seeds: list[int], dest: Path, *,
                     key: str = "train.init_from") -> dict[int, Path]:
    """Local copies of the final checkpoints a configuration key (``train.init_from``,
    ``defense.teacher``) names by run id.

    A seed run gives its own checkpoint to every seed; a configuration run gives each seed the
    checkpoint of its child run with the same seed. Raises ValueError saying what is missing.
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"{key}: {run_id!r} is neither a file nor a run in {uri}") from err
    if run.info.lifecycle_stage != "active":      # get_run still returns a deleted run: never train from it
        raise ValueError(f"{key}: MLflow run {run_id} was deleted (restore it with `mlflow runs restore "
                         f"--run-id {run_id}` or name another run)")

    def fetch(source_id: str) -> Path:
        target = dest / source_id
        target.mkdir(parents=True, exist_ok=True)
        try:
            return Path(client.download_artifacts(source_id, "checkpoint/last.pt", str(target)))
        except (MlflowException, OSError) as err:
            raise ValueError(f"{key}: run {source_id} has no checkpoint/last.pt artifact") from err

    if run.data.tags.get(TAG_ROLE) == "configuration":
        children = seed_run_states(uri, run.info.experiment_id, run_id)
        missing = [s for s in seeds if children.get(s, (None, None))[1] != "FINISHED"]
        if missing:
            raise ValueError(f"{key}: configuration run {run_id} has no finished seed run for seeds "
                             f"{missing} (it has {sorted(s for s, (_, st) in children.items() if st == 'FINISHED')})")
        return {s: fetch(children[s][0]) for s in seeds}
    path = fetch(run_id)
    return {s: path for s in seeds}


# ------------------------------------------------------------------------------- sweeps
def epoch_curves(uri: str, experiment_id: str, parent_run_id: str, metric: str) -> dict[int, dict[int, float]]:
    """``{seed: {epoch: value}}`` of a per-epoch metric over a parent's active child runs."""
    client = _client(uri)
    out = {}
    for seed, (run_id, _) in seed_run_states(uri, experiment_id, parent_run_id).items():
        out[seed] = {m.step: m.value for m in client.get_metric_history(run_id, metric)}
    return out


def configuration_runs(uri: str, experiment_id: str, sweep_run_id: str) -> list:
    """The active configuration runs (MLflow ``Run`` objects) of a sweep, in start order."""
    return _client(uri).search_runs([experiment_id], filter_string=(
        f"tags.`{TAG_PARENT}` = '{sweep_run_id}' and tags.`{TAG_ROLE}` = 'configuration'"),
        order_by=["attributes.start_time ASC"], max_results=10000)


# ---------------------------------------------------------------------- analyses (distfair analyze)
def find_experiment(uri: str, name: str) -> str:
    """The id of the active experiment ``name``. Never creates a store: a local SQLite file
    that does not exist is reported. Raises LookupError saying what exists instead."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LookupError(f"no MLflow store at {uri[len('sqlite:///'):]} (give --tracking-uri or set "
                          "MLFLOW_TRACKING_URI to where distfair run/sweep recorded)")
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage != "active":
            known = sorted(e.name for e in client.search_experiments())
            state = "is deleted" if experiment is not None else "does not exist"
            raise LookupError(f"MLflow experiment {name!r} {state} in {uri}; experiments there: "
                              f"{', '.join(known) or 'none'}")
    except MlflowException as err:
        raise LookupError(f"cannot read the MLflow store {uri}: {str(err).splitlines()[0]}") from None
    return experiment.experiment_id


def check_sweep_run(uri: str, experiment_id: str, run_id: str) -> None:
    """Raises LookupError unless ``run_id`` is an active sweep run of the experiment."""
    from mlflow.exceptions import MlflowException

    try:
        run = _client(uri).get_run(run_id)
    except MlflowException:
        raise LookupError(f"no MLflow run {run_id!r} in {uri}") from None
    role = run.data.tags.get(TAG_ROLE)
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        raise LookupError(f"run {run_id} is not an active run of this experiment")
    if role != "sweep":
        raise LookupError(f"run {run_id} is a {role or 'non-distfair'} run, not a sweep run (the top run of "
                          "`distfair sweep`, printed as 'sweep run <id>')")


def configuration_params(uri: str, experiment_id: str, sweep_run_id: str | None = None) -> list[dict]:
    """``[{"run_id", "name", "status", "params"}]`` of the experiment's active configuration
    runs (``distfair run`` parents and sweep trials), or of one sweep's, in start order."""
    query = f"tags.`{TAG_ROLE}` = 'configuration'"
    if sweep_run_id:
        query += f" and tags.`{TAG_PARENT}` = '{sweep_run_id}'"
    runs = _client(uri).search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"],
                                    max_results=10000)
    return [{"run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id, "status": r.info.status,
             "params": dict(r.data.params)} for r in runs]


def finished_seed_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[int, tuple[str, dict[str, float]]]:
    """``{seed: (run id, {metric: latest value})}`` of the parent's FINISHED, active child runs
    (retired runs are deleted, failed or killed ones are not FINISHED: both left out)."""
    runs = _client(uri).search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                                    max_results=10000)
    return {int(r.data.tags[TAG_SEED]): (r.info.run_id, dict(r.data.metrics)) for r in runs
            if r.info.status == "FINISHED" and TAG_SEED in r.data.tags}


def run_json_artifact(uri: str, run_id: str, path: str) -> dict | None:
    """A run's JSON artifact (e.g. ``confusion_matrices.json``), or None when it has none."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = _client(uri).download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
        except (MlflowException, OSError, ValueError):
            return None


# ---------------------------------------------------------------------------- reports (distfair report)
def run_overview(uri: str, run_id: str) -> dict:
    """``{"run_id", "name", "status", "experiment_id", "experiment", "role", "params", "tags"}``
    of an active run. Raises LookupError when there is none (or the store cannot be read)."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LookupError(f"no MLflow store at {uri[len('sqlite:///'):]} (give --tracking-uri or set "
                          "MLFLOW_TRACKING_URI to where distfair run/sweep recorded)")
    client = _client(uri)
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException:
        raise LookupError(f"no MLflow run {run_id!r} in {uri}") from None
    if run.info.lifecycle_stage != "active":
        raise LookupError(f"run {run_id} is deleted")
    return {"run_id": run.info.run_id, "name": run.info.run_name or run.info.run_id, "status": run.info.status,
            "experiment_id": run.info.experiment_id, "experiment": experiment.name,
            "role": run.data.tags.get(TAG_ROLE), "params": dict(run.data.params), "tags": dict(run.data.tags)}


def report_configurations(uri: str, experiment_id: str, sweep_run_id: str | None = None) -> list[dict]:
    """As :func:`configuration_params`, with each run's ``tags`` (``distfair.configuration``,
    the sweep's ``distfair.trial_params``, ``mlflow.parentRunId``) and ``experiment`` name."""
    query = f"tags.`{TAG_ROLE}` = 'configuration'"
    if sweep_run_id:
        query += f" and tags.`{TAG_PARENT}` = '{sweep_run_id}'"
    client = _client(uri)
    name = client.get_experiment(experiment_id).name
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"],
                              max_results=10000)
    return [{"run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id, "status": r.info.status,
             "experiment_id": experiment_id, "experiment": name, "role": "configuration",
             "params": dict(r.data.params), "tags": dict(r.data.tags)} for r in runs]


def report_seed_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
    """The FINISHED, active seed runs of a configuration run, by seed: ``[{"seed", "run_id",
    "metrics": {name: latest value}, "record": result.json or None, "per_class_acc":
    per_class_acc.json or None, "confusion": confusion_matrices.json or None}]``. The result
    record holds per-class accuracies and confusion matrices; the two older artifacts are
    downloaded only for seed runs recorded before it existed."""
    out = []
    for seed, (run_id, metrics) in sorted(finished_seed_runs(uri, experiment_id, parent_run_id).items()):
        record = run_json_artifact(uri, run_id, result_record.SEED_RECORD_NAME)
        per_class = confusion = None
        if record is None:
            per_class = run_json_artifact(uri, run_id, "per_class_acc.json")
            confusion = run_json_artifact(uri, run_id, "confusion_matrices.json")
        out.append({"seed": seed, "run_id": run_id, "metrics": metrics, "record": record,
                    "per_class_acc": per_class, "confusion": confusion})
    return out


def sweep_runs(uri: str, experiment_id: str, sweep_run_id: str | None = None) -> list[dict]:
    """The experiment's active sweep runs (or the one given), oldest first: ``[{"run_id",
    "name", "status", "objective": [{metric, stat, mode, k}], "best_params": {key: value} or
    None, "pareto_run_ids": [configuration run ids] or None}]`` (``best.*`` params as the
    sweep logged them, the Pareto set from its ``pareto.json``)."""
    query = f"tags.`{TAG_ROLE}` = 'sweep'"
    runs = _client(uri).search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"],
                                    max_results=10000)
    out = []
    for r in runs:
        if sweep_run_id and r.info.run_id != sweep_run_id:
            continue
        params = dict(r.data.params)
        try:
            objective = json.loads(params.get("objective", "[]"))
        except ValueError:
            objective = []
        best = {k[len("best."):]: v for k, v in params.items() if k.startswith("best.")} or None
        pareto = run_json_artifact(uri, r.info.run_id, "pareto.json") if len(objective) > 1 else None
        out.append({"run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id, "status": r.info.status,
                    "objective": objective if isinstance(objective, list) else [], "best_params": best,
                    "pareto_run_ids": [p["parent_run_id"] for p in pareto if isinstance(p, dict)
                                       and "parent_run_id" in p] if isinstance(pareto, list) else None})
    return out


def latest_analysis_images(uri: str, experiment_id: str, dest: Path) -> tuple[str, list[Path]] | None:
    """The newest FINISHED analysis run of the experiment (``distfair analyze``, tag
    ``distfair.kind=analysis``) and its PNG artifacts downloaded under ``dest``; None when
    there is none."""
    client = _client(uri)
    runs = client.search_runs([experiment_id], filter_string="tags.`distfair.kind` = 'analysis' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    dest.mkdir(parents=True, exist_ok=True)
    paths = [Path(client.download_artifacts(run_id, a.path, str(dest)))
             for a in client.list_artifacts(run_id) if not a.is_dir and a.path.endswith(".png")]
    return run_id, sorted(paths)
