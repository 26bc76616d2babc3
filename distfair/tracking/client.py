"""The MLflow client of distfair: retried while the tracking server is unreachable.

Every read and the driver's writes go through :class:`_RetryingClient` (:func:`_client`): a
call that fails for a transient reason (the server unreachable, timing out, overloaded) is
retried within a retry budget, the outage and the recovery are said once in the progress
output, then :class:`TrackingUnavailable` is raised. MLflow's own HTTP retries are turned off
when ``distfair.tracking`` is imported (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, in the package's
``__init__``), so that an outage reaches this retrying. The runs this process opened are
remembered until it closes them, for :func:`distfair.tracking.unlogged.park_open_runs`.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Callable

from mlflow.tracking import MlflowClient

from distfair.tracking import buffer as tracking_buffer


def _client(uri: str) -> MlflowClient:
    return _RetryingClient(uri)


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


def forget_open_runs(uri: str) -> None:
    """A command starts remembering afresh: the runs an earlier command of this process created
    (a long-lived process, such as a notebook or the test suite, runs several) were closed by
    their workers or parked by that command, and are not this command's to park."""
    _open_runs.pop(uri, None)


def _remember(uri: str, method: str, args: tuple, kwargs: dict, result) -> None:
    runs = _open_runs.setdefault(uri, {})
    if method == "create_run":
        runs[result.info.run_id] = None
    elif method == "update_run" and (kwargs.get("status") or (args[1:2] or [None])[0]) == "RUNNING":
        runs[kwargs.get("run_id") or args[0]] = None
    elif method in ("set_terminated", "delete_run"):
        runs.pop(kwargs.get("run_id") or args[0], None)
