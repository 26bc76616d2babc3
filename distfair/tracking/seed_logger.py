"""One seed's record, written from the Ray worker that trains it (:class:`SeedRunLogger`)."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from mlflow.entities import Metric, RunTag

from distfair.results import record as result_record
from distfair.tracking import buffer as tracking_buffer
from distfair.tracking.client import (TrackingUnavailable, _first_line, _RetryingClient, _say, _stderr_log,
                                      _transient)
from distfair.tracking.tags import TAG_FAILURE_REASON
from distfair.tracking.unlogged import _apply_op, relog_command, unlogged_root
from distfair.tracking.writes import MAX_TAG_LEN, _batched, _metrics


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

    Every write goes through a bounded buffer (``distfair.tracking.buffer``), journaled to disk
    before each epoch checkpoint is reported (:meth:`journal`, replayed by a restarted worker): while the
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
                 log: Callable[[str], None] | None = None, figures: bool | None = None):
        self.uri, self.run_id = uri, run_id
        #: draw the seed's figures (``plots/``); None: ``$DISTFAIR_SEED_FIGURES`` of this process
        self.figures = seed_figures_enabled() if figures is None else figures
        self.log = log or _stderr_log
        self.retry_s = tracking_buffer.retry_budget_s() if retry_s is None else retry_s
        self.client = _RetryingClient(uri, self.retry_s, self.log)
        self.folder = unlogged_root(storage_path or Path(os.getcwd(), "distfair_runs")) / run_id
        self.buffer = tracking_buffer.WriteBuffer(self.folder, buffer_limit or tracking_buffer.buffer_limit())
        self.backoff = tracking_buffer.Backoff()
        self._flushed = 0                # writes flushed since the outage began
        # a worker restarted from its last epoch checkpoint after dying while the server was away:
        # what it had buffered up to that checkpoint is in its journal, and those epochs are not
        # trained again (the epochs after it are, and the dead worker's writes of them are dropped)
        journaled = self.buffer.take_journal()
        self._logged_epochs: set[int] = {m[3] for op in journaled for m in op.get("metrics", ())
                                         if m[0] == EPOCH_MARK}
        if journaled:
            _say(self.log, f"seed run {run_id}: {len(journaled)} write(s) a stopped worker had buffered are "
                           "replayed from its journal")
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
        self._logged_epochs |= {m.step for m in self.client.get_metric_history(run_id, EPOCH_MARK)}

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

    def journal(self) -> None:
        """Before an epoch checkpoint is reported: the writes still buffered (the server is away)
        go to an fsync'd journal beside the spill file, which a worker restarted from that
        checkpoint replays (:meth:`~distfair.tracking.buffer.WriteBuffer.write_journal`)."""
        self.buffer.write_journal()

    def server_away(self) -> bool:
        """One try at the server: True when it does not answer (for a test hook that must act
        during an outage)."""
        try:
            self.client.mlflow.get_run(self.run_id)
        except Exception as err:
            if _transient(err):
                return True
            raise
        return False

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
            if self.figures:
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
#: a test looks at the figures. Read by the driver (:func:`seed_logger_factory`), so it holds
#: for the command's seeds wherever their workers were started.
SEED_FIGURES_ENV = "DISTFAIR_SEED_FIGURES"


def seed_figures_enabled() -> bool:
    return os.environ.get(SEED_FIGURES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def seed_logger_factory(uri: str, storage_path: str | Path):
    """What the driver hands to the Ray workers: ``factory(run_id, log=...)`` makes the
    :class:`SeedRunLogger` of a seed run, with the retry budget and buffer size read here, in
    the driver's environment (so is whether to draw the seed figures), and ``storage_path``
    (shared on a cluster) for what waits."""
    import functools

    return functools.partial(SeedRunLogger, uri, storage_path=str(storage_path),
                             retry_s=tracking_buffer.retry_budget_s(), buffer_limit=tracking_buffer.buffer_limit(),
                             figures=seed_figures_enabled())
