"""Everything MLflow: the only module of distfair that imports it.

Record layout of one configuration (``distfair run``):

* a **parent run** with every resolved config value as a param (``train.lr`` style), and for
  every metric its children report ``<name>_mean``, ``<name>_std`` (ddof=1), ``<name>_min``,
  ``<name>_max``, ``<name>_ci95_low``/``_high`` plus ``n_seeds``;
* one **child run per seed** (tag ``mlflow.parentRunId``), param ``seed``, per-epoch training
  curves with ``step=epoch``, the final metrics (the evaluation summaries' included),
  self-check tags ``distfair.check.*``, and artifacts: confusion matrices, per-class
  accuracies, each evaluation summary's document (subgroup reports, targeted success rates,
  self-checks, ...; JSON), per-sample robust flags (.npz), the figures under ``plots/`` (PNG)
  and the final checkpoint;
* the versioned result records of ``distfair.results.record``: ``result.json`` on each seed run,
  ``configuration_result.json`` on the parent;
* on the parent, at the end: ``plots/seed_stability.png`` (every seed, mean ± std and the 95%
  interval of the main metrics) and a Markdown summary at the top of its description (where
  the MLflow UI's run page opens);
* on both, what reproduces them: the resolved configuration as ``config.yaml`` and tags with
  the versions and the git commit (``distfair.experiment.run.environment_tags``); seed runs also carry
  the configuration's identity tags and params, so the UI filters them by configuration.

Experiments are tagged ``mlflow.experimentKind = custom_model_development`` (a model
training experiment, not a GenAI one). Nothing here reads environment variables into a run:
credentials (``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, AWS keys) stay out.

All writes are batched (``log_batch``): against a tracking server one call per value costs
~40 ms (docs/ray-notes.md, "MLflow"). Children are looked up by (parent, seed) before being created, so
a retried seed never produces a duplicate run.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from distfair.results import record as result_record
from distfair.tracking import buffer as tracking_buffer

DEFAULT_DB = "mlflow.db"
TAG_ROLE = "distfair.role"
TAG_SEED = "distfair.seed"
TAG_PARENT = "mlflow.parentRunId"
MAX_BATCH = 100
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000          # MLflow's limit on a tag's value
# distfair downloads a few small files (result records, checkpoints) between its own progress
# lines; MLflow's per-download progress bars only clutter the command's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Outages of the tracking server are retried by distfair itself (_RetryingClient, SeedRunLogger),
# which says so in the progress output and keeps a seed's results when the server never comes
# back. MLflow's own HTTP retries (7 by default, ~4 min of silent back-off inside one call)
# would hide the outage from it; a value the user set is kept.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """``uri`` or ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``, made absolute.

    Ray workers run in other working directories, so a relative SQLite or file path is
    resolved against the driver's working directory here, once.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    cwd = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:          # a bare path means a file store
        return str((cwd / uri).resolve())
    return uri


#: MLflow 3's UI opens an experiment on its GenAI overview (traces, no runs table) whatever the
#: experiment's kind tag; ``workflowType=machine_learning`` on the runs page opens the runs table
#: with metric columns (checked in headless Chromium against MLflow 3.17.2,
#: tests/test_report.py::test_the_printed_mlflow_link_opens_the_runs_table)
UI_RUNS_PATH = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
#: where ``mlflow ui`` serves by default
LOCAL_UI = "http://127.0.0.1:5000"


def ui_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI served at ``base``."""
    return f"{base.rstrip('/')}/" + UI_RUNS_PATH.format(experiment_id=experiment_id)


def ui_command(uri: str, experiment_id: str) -> str:
    """How to look at the results: the command that serves a local store and the URL of the
    experiment's runs table (MLflow's own page for a tracking server)."""
    local = uri.startswith("sqlite:") or "://" not in uri or uri.startswith("file:")
    if local:
        return f"mlflow ui --backend-store-uri {uri}\n  then open {ui_url(LOCAL_UI, experiment_id)}"
    return f"open {ui_url(uri, experiment_id)}"


def _client(uri: str) -> MlflowClient:
    return _RetryingClient(uri)


# ------------------------------------------------------------ outages of the tracking server
TrackingUnavailable = tracking_buffer.TrackingUnavailable


def _transient(err: BaseException) -> bool:
    """A failure worth retrying: the server unreachable, timing out, overloaded or failing
    (HTTP 5xx, 429). A refused request (4xx: unknown run, invalid value) is not."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(err, requests.exceptions.RequestException):
        response = getattr(err, "response", None)
        return response is None or response.status_code >= 500 or response.status_code == 429
    return isinstance(err, (ConnectionError, TimeoutError))


def _first_line(err: BaseException, limit: int = 160) -> str:
    """Why a request failed, short: the socket error (``Connection refused``) when there is one."""
    text = str(err).strip()
    socket_error = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if socket_error:
        return socket_error.group(1).strip()
    text = (text.splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _stderr_log(msg: str) -> None:
    print(f"[distfair] {msg}", file=sys.stderr, flush=True)


#: where the driver's outage lines go (``set_outage_log``; a worker's SeedRunLogger has its own)
_outage_log: Callable[[str], None] = _stderr_log
#: ``{uri: monotonic time of the first failure since the last success}``, shared by every
#: client of this process: once the budget is spent, later calls fail after one try
_down_since: dict[str, float] = {}


def _say(log: Callable[[str], None], msg: str) -> None:
    """A progress line about the server; a lost one (the stream closed) never fails a write."""
    try:
        log(msg)
    except Exception:  # noqa: BLE001
        pass


def set_outage_log(log: Callable[[str], None]) -> None:
    """The driver's progress log: where "tracking server ... unreachable" / "... back" go."""
    global _outage_log
    _outage_log = log


class _RetryingClient:
    """An ``MlflowClient`` whose calls are retried while the tracking server is unreachable
    (:func:`_transient` failures), 1 s, 2 s, ... up to 10 s apart, for at most ``budget_s``
    since the outage began, then raise :class:`TrackingUnavailable`. The first failure and
    the recovery are reported through ``log``. Used for every read and for the driver's writes
    (they cannot go on without the answer); a seed's writes are buffered by SeedRunLogger.
    Runs it creates or reopens are remembered until it closes them (:func:`park_open_runs`)."""

    def __init__(self, uri: str, budget_s: float | None = None, log: Callable[[str], None] | None = None):
        self.uri, self._budget_s, self._log = uri, budget_s, log
        self.mlflow = MlflowClient(tracking_uri=uri)

    def __getattr__(self, name: str):
        attr = getattr(self.mlflow, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = self._call(lambda: attr(*args, **kwargs))
            _remember(self.uri, name, args, kwargs, result)
            return result
        return call

    def _call(self, fn: Callable):
        log = self._log or _outage_log
        budget = tracking_buffer.retry_budget_s() if self._budget_s is None else self._budget_s
        delay = 1.0
        while True:
            try:
                result = fn()
            except Exception as err:
                if not _transient(err):
                    raise
                now = time.monotonic()
                since = _down_since.setdefault(self.uri, now)
                if since == now:
                    _say(log, f"tracking server {self.uri} unreachable ({_first_line(err)}); retrying for up to "
                        f"{budget:.0f} s")
                if now - since >= budget:
                    raise TrackingUnavailable(f"tracking server {self.uri} unreachable for {now - since:.0f} s "
                                              f"({_first_line(err)})") from None
                time.sleep(min(delay, budget - (now - since)))
                delay = min(2 * delay, tracking_buffer.MAX_DELAY_S)
                continue
            since = _down_since.pop(self.uri, None)
            if since is not None:
                _say(log, f"tracking server {self.uri} back after {time.monotonic() - since:.0f} s")
            return result


#: ``{uri: run ids}`` this process created or reopened and has not closed yet
_open_runs: dict[str, dict[str, None]] = {}


def _remember(uri: str, method: str, args: tuple, kwargs: dict, result) -> None:
    runs = _open_runs.setdefault(uri, {})
    if method == "create_run":
        runs[result.info.run_id] = None
    elif method == "update_run" and (kwargs.get("status") or (args[1:2] or [None])[0]) == "RUNNING":
        runs[kwargs.get("run_id") or args[0]] = None
    elif method in ("set_terminated", "delete_run"):
        runs.pop(kwargs.get("run_id") or args[0], None)


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


def _batched(items: list, size: int = MAX_BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _log(client: MlflowClient, run_id: str, metrics=(), params=(), tags=()) -> None:
    metrics, params, tags = list(metrics), list(params), list(tags)
    for chunk in _batched(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _batched(params):
        client.log_batch(run_id, params=chunk)
    for chunk in _batched(tags):
        client.log_batch(run_id, tags=chunk)


def _metrics(values: dict, step: int = 0) -> list[Metric]:
    """Finite numbers only: None (undefined, e.g. target shares without any error) is skipped."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_LEN]


#: MLflow 3's experiment type: ``custom_model_development`` is a model training experiment
#: (the UI's "Machine learning" type), ``genai_development`` one of GenAI apps and agents
#: (mlflow/server/js: ExperimentKind; set through the same tag by the UI's type selector)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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


def _log_texts(client: MlflowClient, run_id: str, files: dict[str, str]) -> None:
    """Text artifacts (``{file name: content}``) at the run's artifact root."""
    if not files:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            client.log_artifact(run_id, str(Path(tmp) / name))


#: MLflow's run description (shown as "Description" in the UI)
TAG_DESCRIPTION = "mlflow.note.content"


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


def latest_configuration_run(uri: str, experiment_id: str, *, config_hash: str, config_stem: str,
                             configuration: str | None = None) -> dict | None:
    """The newest active ``distfair run`` configuration run (not a sweep trial) of a
    configuration: same ``distfair.config_hash``, a ``distfair.config_file`` with the stem
    ``config_stem`` and the same ``distfair.configuration`` (None: a file without a
    ``configurations:`` block). ``{"run_id", "run_name", "status", "seeds"}`` (``seeds``: its
    ``seeds`` param as a list, None if unreadable), or None when there is none."""
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
        return {"run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id,
                "status": run.info.status, "seeds": seeds}
    return None


def reopen_run(uri: str, run_id: str) -> str:
    """A configuration run taken up again by ``distfair run --resume``: RUNNING until its new
    summary closes it (a KILLED run would keep that status). Returns its name."""
    client = _client(uri)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "distfair.resumed", "true")
    return client.get_run(run_id).info.run_name or run_id


def retire_run(uri: str, run_id: str) -> None:
    """An unfinished run about to be redone: marked KILLED (if it was left open) and then
    deleted, so every (configuration, seed) keeps exactly one active run."""
    client = _client(uri)
    if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, "KILLED")
    client.set_tag(run_id, "distfair.retired", "redone after an interruption")
    client.delete_run(run_id)


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


#: why a seed or configuration run ended FAILED (a diverged seed's ``loss is nan at epoch e, batch b``)
TAG_FAILURE_REASON = "distfair.failure_reason"


class RunClosedError(RuntimeError):
    """A worker was about to write into a seed run the driver had already closed."""


#: a metric every epoch row has (``distfair.engine.train.train_epoch``): which epochs a seed
#: run has logged already
EPOCH_MARK = "epoch_time_s"


class SeedRunLogger:
    """Writes one seed's record into its (already created) child run; used on Train rank 0.

    A run the driver has closed as KILLED or FAILED (Ctrl-C, a trial stopped early by the
    sweep's scheduler) is never reopened: a worker that starts a seed after that moment
    raises ``RunClosedError`` instead of leaving a run RUNNING that nobody will close.

    Every write goes through a bounded buffer (``distfair.tracking.buffer``): while the
    tracking server is unreachable, training goes on, the epochs' metrics wait (beyond
    ``buffer_limit`` operations on disk under ``<storage_path>/unlogged/<run id>/``) and are
    flushed when it answers again; ``log`` says both. The end of a seed (``log_result``)
    waits for the server for up to ``retry_s`` seconds since the outage began
    (``$DISTFAIR_TRACKING_RETRY_S``, default 300); then every write not logged is kept in
    that folder and :class:`TrackingUnavailable` names it and the ``distfair relog`` command.
    A seed that begins while the server is away waits for it as long, then trains anyway.
    """

    def __init__(self, uri: str, run_id: str, *, storage_path: str | Path | None = None,
                 retry_s: float | None = None, buffer_limit: int | None = None,
                 log: Callable[[str], None] | None = None):
        self.uri, self.run_id = uri, run_id
        self.log = log or _stderr_log
        self.retry_s = tracking_buffer.retry_budget_s() if retry_s is None else retry_s
        self.client = _RetryingClient(uri, self.retry_s, self.log)
        self.folder = unlogged_root(storage_path or Path(os.getcwd(), "distfair_runs")) / run_id
        self.buffer = tracking_buffer.WriteBuffer(self.folder, buffer_limit or tracking_buffer.buffer_limit())
        self.backoff = tracking_buffer.Backoff()
        self._flushed = 0                # writes flushed since the outage began
        self._logged_epochs: set[int] = set()
        try:
            status = self.client.get_run(run_id).info.status
        except TrackingUnavailable as err:
            # away for the whole budget before this seed began: train it anyway, its writes wait
            # (and are kept on disk if the server never returns). The run was created RUNNING by
            # the driver, which could not have closed it without the server either.
            self.backoff.failed(time.monotonic() - self.retry_s)
            _say(self.log, f"{err}; training seed run {run_id} anyway, its writes wait")
            return
        if status in ("KILLED", "FAILED"):
            raise RunClosedError(f"MLflow run {run_id} was already closed as {status} by the driver "
                                 "(interrupted or stopped early); not reopening it")
        self.client.update_run(run_id, status="RUNNING")
        # A group Ray Train restarted retrains from the last checkpoint its controller had
        # registered, which can be older than the last epoch this run logged: those epochs come
        # again with the same values (the run is deterministic) and are not logged twice.
        self._logged_epochs = {m.step for m in self.client.get_metric_history(run_id, EPOCH_MARK)}

    # ------------------------------------------------------------------ buffered writes
    def _queue(self, metrics: list[Metric] = (), tags: list[RunTag] = ()) -> None:
        for chunk in _batched([[m.key, m.value, m.timestamp, m.step] for m in metrics], 1000):
            self.buffer.append({"op": "batch", "metrics": chunk})
        for chunk in _batched([[t.key, t.value] for t in tags]):
            self.buffer.append({"op": "batch", "tags": chunk})

    def _queue_file(self, path: str | Path, artifact_path: str | None = None, *, folder: bool = False) -> None:
        self.buffer.append({"op": "artifacts" if folder else "artifact", "file": str(path),
                            "artifact_path": artifact_path})

    def flush(self, *, wait: bool = True) -> None:
        """Write what is buffered. ``wait=False``: one try when one is due, and on with
        training if the server does not answer; ``wait=True``: retry until everything is
        written or the retry budget is spent (then :class:`TrackingUnavailable`)."""
        client = self.client.mlflow             # one try per call: the retrying is done here
        while len(self.buffer):
            now = time.monotonic()
            if self.backoff.down_since is not None and now < self.backoff.next_try:
                if not wait:
                    return
                time.sleep(self.backoff.next_try - now)
            try:
                _apply_op(client, self.run_id, self.folder, self.buffer.peek())
            except Exception as err:
                if not _transient(err):
                    raise
                self.buffer.stash_files()         # before a temporary artifact file goes away
                now = time.monotonic()
                if self.backoff.failed(now):
                    self._flushed = 0
                    _say(self.log, f"tracking server {self.uri} unreachable; {len(self.buffer)} write(s) of run "
                             f"{self.run_id} buffered, retrying for up to {self.retry_s:.0f} s "
                             f"({_first_line(err)})")
                if wait and self.backoff.elapsed(now) >= self.retry_s:
                    self._give_up(err)
                continue
            self.buffer.pop()
            self._flushed += 1
        length = self.backoff.recovered()
        if length is not None:
            _say(self.log, f"tracking server {self.uri} back after {length:.0f} s; {self._flushed} buffered write(s) "
                     f"of run {self.run_id} flushed")
        self.buffer.discard_copies()

    def _give_up(self, err: BaseException) -> None:
        waited = self.backoff.elapsed(time.monotonic())
        reason = f"tracking server {self.uri} unreachable for {waited:.0f} s ({_first_line(err)})"
        count = len(self.buffer)
        folder = self.buffer.park({"run_id": self.run_id, "tracking_uri": self.uri, "reason": reason,
                                   "parked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        raise TrackingUnavailable(f"{reason}; run {self.run_id}: {count} write(s) not logged (its results) are kept "
                                  f"in {folder}; once the server is back, log them with: "
                                  f"{relog_command(folder.parent, self.uri)}")

    def log_epoch(self, epoch: int, row: dict) -> None:
        if epoch in self._logged_epochs:
            return
        self._logged_epochs.add(epoch)
        self._queue(metrics=_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch))
        self.flush(wait=False)

    def log_failure(self, reason: str) -> None:
        """Close the run FAILED with ``reason`` as tag :data:`TAG_FAILURE_REASON` (a diverged
        seed: ``loss is nan at epoch e, batch b``); its epoch curves up to then stay."""
        self.flush()                 # the epochs still buffered first
        self.client.set_tag(self.run_id, TAG_FAILURE_REASON, reason[:MAX_TAG_LEN])
        self.client.set_terminated(self.run_id, "FAILED")

    def log_result(self, result: dict, *, title: str) -> None:
        """Final metrics, tags and artifacts of a ``SeedResult.to_dict()``; marks the run
        FINISHED. Artifacts: ``confusion_matrices.json`` and ``per_class_acc.json`` (with an
        abstaining predictor the abstentions per true class, in no cell, and
        ``per_class_rejection``), the document of every evaluation summary under its own name
        (``subgroups.json``, ``target_success.json``, ``self_checks.json``, ...), the result
        record ``result.json``, the per-sample robust flags (.npz), every figure of
        ``distfair.evaluation.seed_figures.seed_figures`` under ``plots/``, and the final
        checkpoint. The summaries' findings become tags ``distfair.check.<id>``."""
        from distfair.evaluation.seed_figures import seed_figures

        self._queue(metrics=_metrics(result["metrics"], step=len(result["history"])))
        found = result.get("checks") or []
        tags = {f"distfair.check.{f['check']}": f["message"][:5000] for f in found}
        tags["distfair.checks"] = f"{len(found)} warning(s)" if found else "passed"
        # the evaluation's own tags: distfair.autoattack_version.<entry>, distfair.eval_error.<entry>
        tags.update({k: str(v)[:5000] for k, v in (result.get("tags") or {}).items()})
        self._queue(tags=[RunTag(k, v) for k, v in tags.items()])
        documents = {
            "confusion_matrices.json": {"rows": "true class", "columns": "predicted class",
                                        "class_names": result["class_names"], "matrices": result["confusion"]},
            "per_class_acc.json": {"class_names": result["class_names"], "per_class_acc": result["per_class_acc"]},
            **{s["artifact"]: s["document"] for s in (result.get("summaries") or {}).values()},
            # the versioned result record: every value above, with its meaning in fields
            result_record.SEED_RECORD_NAME: result_record.seed_record(result),
        }
        if result.get("abstentions"):      # a predictor that can abstain: abstentions are in no matrix cell
            documents["confusion_matrices.json"]["abstained"] = {
                name: v["abstained"] for name, v in result["abstentions"].items()}
            documents["per_class_acc.json"]["per_class_rejection"] = {
                name: v["per_class_rejection"] for name, v in result["abstentions"].items()}
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for filename, document in documents.items():
                (tmp / filename).write_text(json.dumps(document, indent=1, allow_nan=False, default=str)
                                            if filename == result_record.SEED_RECORD_NAME
                                            else json.dumps(document, indent=1))
                self._queue_file(tmp / filename)
            if result.get("flags_path") and Path(result["flags_path"]).is_file():
                self._queue_file(result["flags_path"])
            if seed_figures_enabled():
                figures = tmp / "plots"
                figures.mkdir()
                seed_figures(result, title, figures)
                self._queue_file(figures, "plots", folder=True)
            if result.get("final_model_path"):
                self._queue_file(result["final_model_path"], "checkpoint")
            self.buffer.append({"op": "status", "status": "FINISHED"})
            self.flush()            # inside: a write that waits keeps a copy of its temporary file


#: ``0`` skips the per-seed figures (``plots/`` of each seed run: about 2 s of drawing per seed on
#: a small CPU); every number and document is still logged. The test suite sets it, except where
#: a test looks at the figures. Read where the seed is logged (the worker inherits it).
SEED_FIGURES_ENV = "DISTFAIR_SEED_FIGURES"


def seed_figures_enabled() -> bool:
    return os.environ.get(SEED_FIGURES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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


def seed_logger_factory(uri: str, storage_path: str | Path):
    """What the driver hands to the Ray workers: ``factory(run_id, log=...)`` makes the
    :class:`SeedRunLogger` of a seed run, with the retry budget and buffer size read here, in
    the driver's environment, and ``storage_path`` (shared on a cluster) for what waits."""
    import functools

    return functools.partial(SeedRunLogger, uri, storage_path=str(storage_path),
                             retry_s=tracking_buffer.retry_budget_s(), buffer_limit=tracking_buffer.buffer_limit())


def relog(folder: str | Path, uri: str, log: Callable[[str], None]) -> list[str]:
    """``distfair relog``: log the writes kept under ``folder`` (``<storage>/unlogged`` or one
    run's folder in it) into ``uri``, in their order, each folder deleted once all of it is
    logged; a relog interrupted again resumes after the writes already logged. Returns the
    run ids. Raises LookupError when there is nothing to log, TrackingUnavailable when the
    server does not answer."""
    import shutil

    folders = tracking_buffer.parked_folders(folder)
    if not folders:
        raise LookupError(f"{folder}: no results waiting to be logged here (folders with "
                          f"{tracking_buffer.RUN_INFO}, as `distfair run` keeps under <storage>/unlogged)")
    client = _RetryingClient(uri, log=log)
    done_ids = []
    for run_folder in folders:
        info, ops, done = tracking_buffer.read_parked(run_folder)
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


#: the parent's seed-stability figure (``distfair.plotting.seed_stability``), as an artifact path
SEED_STABILITY_FIGURE = "plots/seed_stability.png"


def log_parent_summary(uri: str, parent_run_id: str, summary: dict[str, dict], *, n_seeds: int,
                       status: str = "FINISHED", configuration_record: dict | None = None,
                       seed_values: dict[str, dict[int, float]] | None = None, figure_title: str = "",
                       description: str | None = None, failures: Mapping[int, str] | None = None) -> None:
    """``<name>_mean/_std/_min/_max/_ci95_low/_ci95_high`` for every child metric, ``n_seeds``,
    a ``seed_summary.json`` artifact (and ``configuration_result.json``, the configuration's
    result record, when given), then close the parent run with ``status``.

    ``seed_values`` (``{metric: {seed: value}}``, metrics of ``summary``): drawn as
    :data:`SEED_STABILITY_FIGURE` with the summary's statistics. ``description``: a Markdown
    section put at the top of the run's description (tag :data:`TAG_DESCRIPTION`; the MLflow
    UI shows only the description's first lines before "Show more"), the text the run was
    created with below it; an earlier section with the same first line (the summary of an
    earlier attempt, at the top or, written by older versions, at the end), up to its last
    line, is replaced. ``failures``
    (seed -> why it has no result): logged as metric ``n_failed`` and, when there are any, as
    tag :data:`TAG_FAILURE_REASON` (``seed 2: loss is nan at epoch 1, batch 3; ...``)."""
    client = _client(uri)
    values = {"n_seeds": n_seeds}
    if failures is not None:
        values["n_failed"] = len(failures)
        if failures:
            reasons = "; ".join(f"seed {s}: {why}" for s, why in sorted(failures.items()))
            client.set_tag(parent_run_id, TAG_FAILURE_REASON, reasons[:MAX_TAG_LEN])
        elif TAG_FAILURE_REASON in client.get_run(parent_run_id).data.tags:   # an earlier attempt's
            client.delete_tag(parent_run_id, TAG_FAILURE_REASON)
    for name, stats in summary.items():
        for stat in ("mean", "std", "min", "max", "ci95_low", "ci95_high"):
            values[f"{name}_{stat}"] = stats.get(stat)
    _log(client, parent_run_id, metrics=_metrics(values))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed_summary.json"
        path.write_text(json.dumps(summary, indent=1))
        client.log_artifact(parent_run_id, str(path))
        if configuration_record is not None:
            path = Path(tmp) / result_record.CONFIGURATION_RECORD_NAME
            path.write_text(json.dumps(configuration_record, indent=1, allow_nan=False, default=str))
            client.log_artifact(parent_run_id, str(path))
        drawn = {m: v for m, v in (seed_values or {}).items() if v and m in summary}
        if drawn:
            from distfair.plotting import seed_stability

            folder, name = SEED_STABILITY_FIGURE.rsplit("/", 1)
            (Path(tmp) / folder).mkdir()
            seed_stability(drawn, summary, figure_title, Path(tmp) / folder / name)
            client.log_artifact(parent_run_id, str(Path(tmp) / folder / name), folder)
    if description:
        _put_description_section(client, parent_run_id, description)
    # A parent the driver already closed as KILLED (a trial stopped early by the scheduler, or
    # Ctrl-C) keeps that status: its configuration thread may still be finishing (as seed runs
    # closed by the driver are never reopened, see SeedRunLogger)
    if client.get_run(parent_run_id).info.status != "KILLED":
        client.set_terminated(parent_run_id, status)


def _put_description_section(client: MlflowClient, run_id: str, section: str) -> None:
    """``section`` first in the run's description, then the rest of it. A section from an
    earlier call starts with the same first line and ends with the same last line; it is taken
    out (to the end of the text when that last line is missing) before the new one goes on top.
    A text too long for a tag loses its end, so the section stays whole."""
    current = client.get_run(run_id).data.tags.get(TAG_DESCRIPTION, "")
    lines = section.strip().splitlines()
    heading, last = lines[0], lines[-1]
    at = current.find(heading)
    if at >= 0:
        end = current.find(last, at + len(heading)) if last != heading else -1
        current = current[:at] + (current[end + len(last):] if end >= 0 else "")
    text = "\n\n".join(p for p in (section.strip(), current.strip()) if p)
    client.set_tag(run_id, TAG_DESCRIPTION, text if len(text) <= MAX_TAG_LEN else text[:MAX_TAG_LEN - 2] + " …")


def mark_runs(uri: str, run_ids: Iterable[str], status: str) -> None:
    """Close runs that are still open with ``status`` (FAILED or KILLED); finished ones stay."""
    client = _client(uri)
    for run_id in run_ids:
        run = client.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run_id, status)


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


def configuration_runs(uri: str, experiment_id: str, sweep_run_id: str) -> list:
    """The active configuration runs (MLflow ``Run`` objects) of a sweep, in start order."""
    return _client(uri).search_runs([experiment_id], filter_string=(
        f"tags.`{TAG_PARENT}` = '{sweep_run_id}' and tags.`{TAG_ROLE}` = 'configuration'"),
        order_by=["attributes.start_time ASC"], max_results=10000)


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


# ---------------------------------------------------------------------------- reports (distfair report)
#: the tags of a report run (``distfair report`` over an experiment or a list of runs)
REPORT_TAGS = {"distfair.kind": "report", TAG_ROLE: "report"}


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
