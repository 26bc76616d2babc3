"""Tracking writes kept while the tracking server is unreachable (no MLflow here).

``distfair.tracking.SeedRunLogger`` queues each write of a seed run (a batch of metrics,
params or tags, an artifact, the final status) as a JSON-able *operation* in a
:class:`WriteBuffer`, and flushes the buffer whenever the server answers. The buffer holds at
most ``limit`` operations in memory; beyond that it spills them, in order, to a file in the
run's folder ``<storage>/unlogged/<run id>/``, so a long outage during a long training costs
disk, not the worker's memory. Artifact files are copied into that folder while they wait (the
originals are temporary files).

When the retry budget runs out, :meth:`WriteBuffer.park` writes every pending operation to
``pending.jsonl`` beside ``run.json`` (run id, tracking URI, reason); ``distfair relog``
replays them later in the same order (:func:`read_parked`, :func:`mark_replayed`).
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import time
import uuid
from pathlib import Path

#: seconds a write may keep failing before distfair gives up on the tracking server: long
#: enough for a tracking server to be restarted (default 300; ``DISTFAIR_TRACKING_RETRY_S``)
RETRY_ENV, DEFAULT_RETRY_S = "DISTFAIR_TRACKING_RETRY_S", 300.0
#: operations a seed run keeps in memory while the server is unreachable; the rest spill to disk
BUFFER_ENV, DEFAULT_BUFFER = "DISTFAIR_TRACKING_BUFFER", 1000
#: the folder under the storage path that holds the runs whose writes could not be logged
UNLOGGED = "unlogged"
RUN_INFO, PENDING, SPILL, FILES, REPLAYED = "run.json", "pending.jsonl", "spill.jsonl", "files", "replayed"
#: what a seed run's pending writes were when its last epoch checkpoint was reported (fsync'd):
#: a worker restarted from that checkpoint replays them (:meth:`WriteBuffer.write_journal`)
JOURNAL = "journal.jsonl"
#: the longest wait between two tries (the first waits 1 s, each next one twice as long)
MAX_DELAY_S = 10.0


def _env_number(name: str, default: float, kind=float):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={text!r}: must be positive")
    return value


def retry_budget_s() -> float:
    """``$DISTFAIR_TRACKING_RETRY_S`` or 300 s. Raises ValueError on a bad value."""
    return _env_number(RETRY_ENV, DEFAULT_RETRY_S)


def buffer_limit() -> int:
    """``$DISTFAIR_TRACKING_BUFFER`` or 1000 operations. Raises ValueError on a bad value."""
    return _env_number(BUFFER_ENV, DEFAULT_BUFFER, int)


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer for the whole retry budget
    (``$DISTFAIR_TRACKING_RETRY_S``); the message says where the writes not logged are kept
    and the ``distfair relog`` command that logs them. (Here, without MLflow, so that the
    command line catches it without importing MLflow; ``distfair.tracking`` raises it.)"""


class Backoff:
    """When to try again: 1 s after the first failure, then twice as long each time (at most
    :data:`MAX_DELAY_S`). ``down_since`` is None while the server answers."""

    def __init__(self):
        self.down_since: float | None = None
        self.next_try = 0.0
        self.delay = 1.0

    def failed(self, now: float) -> bool:
        """Records a failure; True when it is the first of an outage."""
        first = self.down_since is None
        if first:
            self.down_since, self.delay = now, 1.0
        self.next_try = now + self.delay
        self.delay = min(2 * self.delay, MAX_DELAY_S)
        return first

    def elapsed(self, now: float) -> float:
        return 0.0 if self.down_since is None else now - self.down_since

    def recovered(self) -> float | None:
        """Records a success; the outage's length when one just ended, else None."""
        if self.down_since is None:
            return None
        length, self.down_since = time.monotonic() - self.down_since, None
        return length


class WriteBuffer:
    """Pending operations of one run, oldest first: at most ``limit`` in memory, the rest in
    ``folder/spill.jsonl`` (created only when needed). An operation with a ``file`` (a path)
    names a local file or folder; :meth:`stash_files` copies it under ``folder/files/`` and
    makes the path relative to ``folder``."""

    def __init__(self, folder: str | Path, limit: int):
        if limit < 1:
            raise ValueError(f"buffer limit must be at least 1, not {limit}")
        self.folder, self.limit = Path(folder), limit
        self.memory: collections.deque[dict] = collections.deque()
        self.spilled = 0
        self._copies: list[Path] = []

    def __len__(self) -> int:
        return len(self.memory) + self.spilled

    def append(self, op: dict) -> None:
        if self.spilled or len(self.memory) >= self.limit:
            self._stash(op)           # a spilled operation must not point at a temporary file
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / SPILL, "a") as out:
                out.write(json.dumps(op) + "\n")
            self.spilled += 1
        else:
            self.memory.append(op)

    def peek(self) -> dict:
        if not self.memory and self.spilled:
            self._refill()
        return self.memory[0]

    def pop(self) -> dict:
        self.peek()
        return self.memory.popleft()

    def _refill(self) -> None:
        path = self.folder / SPILL
        lines = path.read_text().splitlines()
        self.memory.extend(json.loads(line) for line in lines[:self.limit])
        rest = lines[self.limit:]
        if rest:
            path.write_text("".join(line + "\n" for line in rest))
        else:
            path.unlink()
        self.spilled = len(rest)

    def _stash(self, op: dict) -> None:
        if "file" not in op or op.get("stashed"):
            return
        source = Path(op["file"])
        # a folder per copy (two artifacts may share a name); unique also next to the copies of an
        # earlier attempt of the same run that were parked there
        relative = Path(FILES) / uuid.uuid4().hex[:12] / source.name
        target = self.folder / relative
        self._copies.append(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        op["file"], op["stashed"] = str(relative), True

    def stash_files(self) -> None:
        """Copy the files of the operations held in memory into the folder (spilled ones
        already are): called as soon as a write fails, before temporary files go away."""
        for op in self.memory:
            self._stash(op)

    def write_journal(self) -> None:
        """Every pending operation, in order, into ``folder/journal.jsonl``, fsync'd (through a
        temporary file renamed over it), the buffer left as it is; no journal when nothing is
        pending. Called before an epoch checkpoint is reported: a worker that dies after it is
        restarted from that checkpoint, and the writes it had buffered for the epochs up to
        then (in memory, or in a spill file that is rewritten as writes move back) would
        otherwise be lost, since the restarted worker does not train those epochs again."""
        path = self.folder / JOURNAL
        if not len(self):
            path.unlink(missing_ok=True)
            return
        self.stash_files()
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(JOURNAL + ".partial")
        with open(partial, "w") as out:
            for op in self.memory:
                out.write(json.dumps(op) + "\n")
            if self.spilled:
                out.write((self.folder / SPILL).read_text())
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def take_journal(self) -> list[dict]:
        """A dead worker's journal (:meth:`write_journal`) made this buffer's content: its
        operations replace anything buffered (the dead worker's spill file, which may hold
        epochs after the checkpoint that are trained again), and the copies they name are
        dropped with this buffer's own once logged. The journal file stays until then."""
        path = self.folder / JOURNAL
        if not path.is_file():
            return []
        ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        (self.folder / SPILL).unlink(missing_ok=True)
        self.memory.clear()
        self.spilled = 0
        for op in ops:
            if op.get("stashed"):
                self._copies.append((self.folder / op["file"]).parent)
            self.append(op)
        return ops

    def park(self, info: dict) -> Path:
        """Every pending operation, in order, appended to ``folder/pending.jsonl`` with
        ``info`` in ``folder/run.json``; the buffer is empty afterwards. Returns the folder."""
        self.stash_files()
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / PENDING, "a") as out:
            for op in self.memory:
                out.write(json.dumps(op) + "\n")
            if self.spilled:
                out.write((self.folder / SPILL).read_text())
        (self.folder / SPILL).unlink(missing_ok=True)
        (self.folder / JOURNAL).unlink(missing_ok=True)          # parked: everything is in pending
        if not (self.folder / RUN_INFO).exists():        # the first reason (a worker's) is kept
            (self.folder / RUN_INFO).write_text(json.dumps(info, indent=1))
        self.memory.clear()
        self.spilled = 0
        return self.folder

    def discard_copies(self) -> None:
        """Everything was logged: drop the copies made while waiting (a folder parked by an
        earlier attempt of the same run keeps its own pending operations)."""
        (self.folder / JOURNAL).unlink(missing_ok=True)
        for copy in self._copies:
            shutil.rmtree(copy, ignore_errors=True)
        self._copies.clear()
        for empty in (self.folder / FILES, self.folder):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()


def parked_folders(root: str | Path) -> list[Path]:
    """The parked runs under ``root``: ``root`` itself when it is one, else its subfolders
    that are (``<storage>/unlogged`` holds one folder per run)."""
    root = Path(root)
    if (root / RUN_INFO).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RUN_INFO).is_file())


def read_parked(folder: str | Path) -> tuple[dict, list[dict], int]:
    """``(run.json, the pending operations, how many of them were already replayed)``."""
    folder = Path(folder)
    info = json.loads((folder / RUN_INFO).read_text())
    pending = folder / PENDING
    ops = [json.loads(line) for line in pending.read_text().splitlines() if line.strip()] if pending.exists() else []
    done = int((folder / REPLAYED).read_text()) if (folder / REPLAYED).exists() else 0
    return info, ops, done


def mark_replayed(folder: str | Path, count: int) -> None:
    """``count`` operations of the folder are logged: an interrupted relog resumes after them."""
    (Path(folder) / REPLAYED).write_text(str(count))


def parked_file(folder: str | Path, op: dict) -> Path:
    """The file or folder a parked operation names."""
    return Path(folder) / op["file"] if op.get("stashed") else Path(op["file"])


class OutsideParkedFolder(LookupError):
    """A parked folder names a file that is not a copy inside it."""


def check_parked_files(folder: str | Path, ops: list[dict]) -> None:
    """Every file a parked folder's writes upload must be a copy inside that folder (parking
    copies them there): an absolute path, a ``..`` or a link that leads out is refused, so a
    planted or edited folder cannot make ``distfair relog`` upload other files, such as a
    credentials file, into the tracking store (issue 28 §2)."""
    base = Path(folder).resolve()
    for op in ops:
        if "file" not in op:
            continue
        named = op["file"]
        inside = op.get("stashed") and not Path(named).is_absolute() and base in (base / named).resolve().parents
        if not inside:
            raise OutsideParkedFolder(f"{folder}: a parked write names {named!r}, which is not a copy inside this "
                                      "folder; nothing was logged")
