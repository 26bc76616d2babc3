"""Connecting to Ray: an existing cluster (``--address``) or a local instance started and
stopped around the command.

With ``log_file`` the command's terminal belongs to distfair alone: everything Ray, Tune,
Optuna, MLflow and the workers print (worker stdout/stderr forwarded by Ray from every node,
Ray's error-level internals, Tune's banners, library loggers, warnings) is appended to that
file instead, and the caller's own progress lines go to the stream it kept before the session.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, TextIO

# Ray Train V2's controller polls its workers every 2 s by default; on the small jobs this tool
# runs that is most of the fixed cost of a fit (docs/ray-notes.md). Users can still override it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Train V2 re-logs every worker `print` through the root logger, which writes it to stderr a
# second time (ray/train/v2/_internal/logging/patch_print.py); workers inherit this on a local
# instance. Ray reads RAY_DEDUP_LOGS when it is imported: worker lines forwarded to the driver
# are then kept whole instead of folded into "[repeated 6x across cluster]".
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

#: the environment a command's own local instance starts with, inherited by its processes,
#: unless the user set a value: Train V2's preemption watcher off (an actor per ``fit()`` that
#: watches for cloud nodes being drained: one process less per worker group on a machine that
#: is never drained; docs/ray-notes.md)
LOCAL_INSTANCE_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def session_log_path(storage_path: str | Path, label: str) -> Path:
    """Where a command's Ray, Tune and worker output goes: ``<storage>/logs/<label>-<time>-<pid>.log``
    (a storage URI such as ``s3://...`` is not a local folder: ``./distfair_runs/logs`` then)."""
    storage = str(storage_path)
    base = Path(storage[len("file://"):] if storage.startswith("file://") else storage)
    if "://" in storage and not storage.startswith("file://"):
        base = Path("distfair_runs")
    return (base / "logs" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log").resolve()


class _PlainText(io.TextIOBase):
    """A text file that drops ANSI escape sequences: Ray colours some of its own messages
    (the dashboard address), and a file is no terminal."""

    ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, file: TextIO):
        self.file = file

    def write(self, text: str) -> int:
        self.file.write(self.ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def writable(self) -> bool:
        return True


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every stream handler (not a file's) of every logger: Ray's, MLflow's and Optuna's
    write to the terminal stream they saw when they were made."""
    loggers = [logging.getLogger()] + [logger for logger in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(logger, logging.Logger)]
    return list({id(h): h for logger in loggers for h in logger.handlers
                 if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)}.values())


def _is_terminal_stream(stream) -> bool:
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream in (sys.__stdout__, sys.__stderr__)


@contextlib.contextmanager
def output_to_file(path: str | Path) -> Iterator[TextIO]:
    """While open, Python-level stdout and stderr (``print``, Ray's forwarding of worker
    output, which looks ``sys.stdout``/``sys.stderr`` up at every line, tracebacks of threads,
    warnings) and every logging handler that writes to the terminal write to ``path``
    (appended, line-buffered) instead. Whoever holds a reference to the real stream from
    before keeps writing there: that is how the driver stays the terminal's only writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = _PlainText(open(path, "a", buffering=1, encoding="utf-8", errors="replace"))
    moved = {}
    for handler in _stream_handlers():
        if _is_terminal_stream(handler.stream):
            moved[handler] = handler.setStream(sink)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sink
    try:
        # Ray's own colour prefix is read at every forwarded line: never colour a file
        with _environment({"RAY_COLOR_PREFIX": "0"}):
            yield sink
    finally:
        sys.stdout, sys.stderr = saved
        for handler in _stream_handlers():       # also those made meanwhile (a library imported now)
            if handler.stream is sink:
                handler.setStream(moved.get(handler, saved[1]))
        # flushed, not closed: a formatter made meanwhile may keep the file to ask isatty()
        # (Optuna's colorlog does), and a late record must not fail on a closed file
        sink.flush()


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the command (``ray job stop``, a Kubernetes eviction, ``kill``): it stops
    as Ctrl-C stops it (the open runs are marked KILLED), and the command exits 143."""


_sigterm = {"received": False}


def sigterm_received() -> bool:
    """Whether SIGTERM stopped the last :func:`ray_session` of this process."""
    return _sigterm["received"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While open (in the main thread), SIGTERM raises :class:`Terminated` there, as SIGINT raises
    KeyboardInterrupt; a second SIGTERM during the clean-up is ignored (the sender's SIGKILL ends
    a clean-up that takes too long). Entered after ``ray.init``, which sets its own handler
    (``sys.exit(15)``: no ``except KeyboardInterrupt`` runs, the runs would stay RUNNING). The
    previous handler is back on exit."""
    _sigterm["received"] = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _sigterm["received"] = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
                resources: dict[str, float] | None = None, quiet: bool = True,
                log_file: str | Path | None = None) -> Iterator[dict]:
    """Yield the cluster's resources. Without ``address`` a local instance is started (with
    ``num_cpus`` logical CPUs if given) and shut down on exit; with one, this process joins
    that cluster as a driver and leaves it running. ``resources`` are extra logical
    resources of a local instance (ignored with ``address``). With ``log_file``, all output of
    Ray, its libraries and the job's workers goes to that file while the session lasts
    (:func:`output_to_file`). SIGTERM stops the session as Ctrl-C does (:func:`sigterm_as_interrupt`)."""
    with contextlib.ExitStack() as stack:
        if log_file is not None:
            stack.enter_context(output_to_file(log_file))
        resources = stack.enter_context(_connected(address, num_cpus=num_cpus, num_gpus=num_gpus,
                                                   resources=resources, quiet=quiet and log_file is None))
        stack.enter_context(sigterm_as_interrupt())
        yield resources


@contextlib.contextmanager
def _connected(address: str | None, *, num_cpus, num_gpus, resources, quiet: bool) -> Iterator[dict]:
    if address:
        # Clusters made with `ray start` use token auth by default in Ray 2.60, and a driver
        # joining one must say so too (docs/ray-notes.md). Local instances keep Ray's own default: the
        # mode must not differ between a driver and the instance it starts.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    # Worker output is forwarded to this driver (from every node of a cluster too): to the
    # terminal, or to the log file.
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True)
    # The command's own instance keeps the dashboard process: it serves Ray's State API, which
    # Train V2's placement-group cleaner polls (without it the cleaner cannot see a controller
    # die, and logs a warning every few seconds). Its processes inherit LOCAL_INSTANCE_ENV.
    # docs/ray-notes.md has the measurements.
    local_env = {} if address else {name: os.environ.get(name) or value for name, value in LOCAL_INSTANCE_ENV.items()}
    with _environment(local_env):
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, **kwargs)
        try:
            yield dict(ray.cluster_resources())
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` while open, and as it was afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
