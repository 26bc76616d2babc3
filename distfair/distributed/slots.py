"""Slots: long-lived Ray Train worker groups that take (configuration, seed) items from a queue.

Every ``TorchTrainer.fit()`` pays Ray Train's start-up (controller, placement group, worker
processes importing torch: 7-13 s on a small machine, docs/operations/performance.md), and Ray
Train cannot reuse a worker group across fits. So a command starts as many worker groups as the
cluster holds at once, one ``fit()`` each (a *slot*: ``scaling.num_workers`` workers, DDP inside),
and every slot's train function (:func:`distfair.distributed.worker.slot_loop_per_worker`) takes
items from a :class:`Ledger` until the command closes it. A ``distfair run`` of several
configurations and a sweep's trials all put their seeds on the same ledger, so start-up is paid
once per slot per command, not once per configuration.

The ledger (one Ray actor holding no CPU, made by the command's driver, never inside a Tune trial:
a trial captures the actors it makes into its placement group) leases items idempotently, as
Ray's own queue cannot (``Queue.get`` loses an item taken just before a crash): a slot asking
again while it holds a lease gets the same item back, which is how a worker group that Ray Train
restarted after a killed worker resumes its item from the item's last epoch checkpoint.

Failures, item by item:

- a seed that diverges fails alone (the worker completes its item as failed; the slot goes on);
- a slot whose ``fit()`` ends in an error (Ray Train gave up after ``scaling.max_failures``
  restarts, or the group could not start) fails the item it held with the error's text, and the
  slot starts a new ``fit()`` for the items left (three failed starts in a row without an item:
  the slot gives up, and when every slot has, the items still queued fail with the last error);
- a lost node that leaves no room for a group (:func:`~distfair.distributed.runner.lost_node_reason`)
  fails every leased and queued item with the reason, and the slots' controllers are stopped;
- a cancelled owner (a sweep trial stopped early) has its queued items dropped, and a slot running
  one of its items leaves it at the next epoch's end.

Pure bookkeeping lives in :class:`Ledger` (plain Python, unit-tested without Ray); the Ray parts
are in :class:`SlotPool` (the owner of the slots, in the command's process) and
:class:`PoolHandle` (what a Tune trial in another process uses to submit and wait).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.distributed.layout import concurrent_groups, worker_resources

#: consecutive ``fit()`` failures of one slot with no item leased before the slot gives up
MAX_EMPTY_FAILURES = 3
#: written into a slot's Ray Train folders once the command closed it: no command uses them again
#: (slot names are new per command); ``distfair gc`` removes only folders carrying it
END_MARKER = "distfair-ended.json"


class Ledger:
    """The queue of items and who holds which (see the module docstring). Plain Python: Ray
    wraps it as an actor (:func:`ledger_actor`); tests use it directly.

    An item is a dict with at least ``key`` (unique in the command) and ``owner`` (who waits for
    it: a configuration, or a sweep trial). A result is the worker's record for the item, or
    ``{"seed": s, "failed": reason}``.
    """

    def __init__(self):
        self.pending: deque[str] = deque()
        self.items: dict[str, dict] = {}
        self.leases: dict[int, str] = {}           # slot -> key it holds
        self.attempts: dict[str, int] = {}
        self.results: dict[str, dict] = {}
        self.cancelled: set[str] = set()
        self.closed = False
        self.broken: str | None = None             # every item fails with this from now on

    def submit(self, items: list[dict]) -> None:
        for item in items:
            key = item["key"]
            if key in self.items:
                raise ValueError(f"item {key} submitted twice")
            self.items[key] = item
            if self.broken is not None:
                self.results[key] = {"seed": item.get("seed"), "failed": self.broken}
            else:
                self.pending.append(key)

    def lease(self, slot: int) -> tuple[str, dict | None, int]:
        """``("item", item, attempt)``: the item this slot holds (again, after a restart) or the
        next queued one; ``("wait", None, 0)``: nothing queued yet; ``("stop", None, 0)``: closed
        and nothing left."""
        key = self.leases.get(slot)
        if key is not None:
            self.attempts[key] += 1
            return "item", self.items[key], self.attempts[key]
        while self.pending:
            key = self.pending.popleft()
            if key in self.results:                 # cancelled while queued
                continue
            self.leases[slot] = key
            self.attempts[key] = 1
            return "item", self.items[key], 1
        return ("stop", None, 0) if self.closed else ("wait", None, 0)

    def complete(self, slot: int, key: str, result: dict) -> None:
        """The slot is done with ``key``: its result (kept first-come: a late duplicate is dropped)."""
        if self.leases.get(slot) == key:
            del self.leases[slot]
        self.results.setdefault(key, result)

    def fail_slot(self, slot: int, reason: str) -> str | None:
        """The slot's ``fit()`` ended in an error: the item it held fails with ``reason``."""
        key = self.leases.pop(slot, None)
        if key is not None:
            self.results.setdefault(key, {"seed": self.items[key].get("seed"), "failed": reason})
        return key

    def break_all(self, reason: str) -> None:
        """Nothing can run any more (a lost node, every slot gone): every unfinished item fails."""
        self.broken = reason
        for slot in list(self.leases):
            self.fail_slot(slot, reason)
        while self.pending:
            key = self.pending.popleft()
            self.results.setdefault(key, {"seed": self.items[key].get("seed"), "failed": reason})

    def cancel_owner(self, owner: str) -> list[str]:
        """Drop the owner's queued items and mark its leased ones for their slots to leave."""
        keys = [k for k, item in self.items.items() if item.get("owner") == owner and k not in self.results]
        for key in keys:
            self.cancelled.add(key)
            if key not in self.leases.values():
                self.results[key] = {"seed": self.items[key].get("seed"), "failed": "cancelled"}
        return keys

    def is_cancelled(self, key: str) -> bool:
        return key in self.cancelled

    def results_of(self, keys: list[str]) -> dict[str, dict]:
        return {k: self.results[k] for k in keys if k in self.results}

    def close(self) -> None:
        self.closed = True

    def idle(self) -> bool:
        """Nothing queued and nothing leased."""
        return not self.pending and not self.leases


def on_this_node() -> dict:
    """Actor options that keep an actor on the driver's node: a worker node may be lost (and
    take the actor with it) while the driver goes on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def ledger_actor():
    """A new :class:`Ledger` actor on the driver's node (no CPU: it never takes a worker's place)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(Ledger).options(**on_this_node()).remote()


@dataclass
class PoolHandle:
    """What a submitter holds (picklable: a Tune trial gets it in its context): the ledger and
    the slots' shape. ``submit`` and ``results`` are all a configuration needs."""

    ledger: object
    slots: int
    num_workers: int
    scaling_key: str

    def submit(self, items: list[dict]) -> None:
        import ray

        ray.get(self.ledger.submit.remote(items))

    def results(self, keys: list[str]) -> dict[str, dict]:
        import ray

        return ray.get(self.ledger.results_of.remote(keys))


def scaling_key(scaling: dict) -> str:
    """What must be equal for two configurations to share slots."""
    return repr((scaling["num_workers"], sorted(worker_resources(scaling).items()), bool(scaling["use_gpu"]),
                 scaling.get("placement_strategy"), scaling.get("max_failures")))


@dataclass
class _Slot:
    index: int
    name: str
    thread: threading.Thread | None = None
    controller: object = None
    fits: int = 0
    #: per fit: wall-clock ``fit_started_at`` and (once returned) ``fit_ended_at``
    clock: list[dict] = field(default_factory=list)
    done: bool = False


class SlotPool:
    """The slots of one command (or of one configuration run without a command's pool), driven
    from daemon threads of this process, each one ``fit()`` at a time. ``tick()`` (called by
    whoever waits, twice a second) drains the progress lines and watches for lost nodes."""

    def __init__(self, scaling: dict, *, storage_path: str, log: Callable[[str], None] = print,
                 progress: bool = True, slots: int | None = None, name: str | None = None):
        import ray

        from distfair.distributed.runner import ProgressChannel, _NodeWatch
        from distfair.distributed.session import alive_node_resources

        self.scaling, self.storage_path, self.log = scaling, str(storage_path), log
        capacity = concurrent_groups(scaling, dict(ray.cluster_resources()), alive_node_resources())
        if scaling.get("max_concurrent_seeds"):
            capacity = min(capacity, scaling["max_concurrent_seeds"])
        self.n = max(1, min(capacity, slots) if slots else capacity)
        self.name = name or f"distfair-slots-{uuid.uuid4().hex[:8]}"
        self.ledger = ledger_actor()
        self.channel = ProgressChannel(log) if progress else None
        self.watch = _NodeWatch(scaling)
        self.handle = PoolHandle(self.ledger, self.n, scaling["num_workers"], scaling_key(scaling))
        self.slots = [_Slot(i, f"{self.name}-{i}") for i in range(self.n)]
        self.broken: str | None = None
        self._lock = threading.Lock()
        for slot in self.slots:
            self._start(slot)

    # ------------------------------------------------------------------ slots
    def _start(self, slot: _Slot) -> None:
        slot.thread = threading.Thread(target=self._drive, args=(slot,), name=f"distfair-slot-{slot.index}",
                                       daemon=True)
        slot.thread.start()

    def _drive(self, slot: _Slot) -> None:
        """One slot's life: ``fit()`` after ``fit()`` until the ledger says stop (module docstring)."""
        import ray

        from distfair.distributed.runner import fit_slot

        empty_failures = 0
        while not slot.done and self.broken is None:
            clock = {"fit_started_at": time.time()}
            slot.clock.append(clock)
            name = slot.name if slot.fits == 0 else f"{slot.name}-r{slot.fits}"
            slot.fits += 1
            try:
                fit_slot(self.scaling, slot=slot.index, name=name, storage_path=self.storage_path,
                         ledger=self.ledger, progress=self.channel.queue if self.channel else None,
                         on_controller=lambda c, s=slot: setattr(s, "controller", c))
                slot.done = True                     # the train function returned: the ledger said stop
            except BaseException as err:  # noqa: BLE001 - a slot's failure fails its item, not the command
                if self.broken is not None:
                    break
                reason = f"{type(err).__name__}: {err}"
                try:
                    key = ray.get(self.ledger.fail_slot.remote(slot.index, reason))
                except Exception:  # noqa: BLE001 - Ray is going down (Ctrl-C)
                    break
                if key is not None:
                    empty_failures = 0
                    self.log(f"worker group of slot {slot.index} failed on {key}: {reason}")
                else:
                    empty_failures += 1
                    self.log(f"worker group of slot {slot.index} failed to start ({empty_failures}/"
                             f"{MAX_EMPTY_FAILURES}): {reason}")
                    if empty_failures >= MAX_EMPTY_FAILURES:
                        slot.done = True
                        self._slot_gave_up(reason)
            finally:
                clock["fit_ended_at"] = time.time()
                slot.controller = None

    def _slot_gave_up(self, reason: str) -> None:
        with self._lock:
            if all(s.done for s in self.slots) and self.broken is None:
                self._break(f"every worker group failed to start: {reason}")

    def _break(self, reason: str) -> None:
        import ray

        self.broken = reason
        with contextlib.suppress(Exception):
            ray.get(self.ledger.break_all.remote(reason))
        for slot in self.slots:
            if slot.controller is not None:          # fit() returns instead of retrying the start forever
                with contextlib.suppress(Exception):
                    ray.kill(slot.controller)

    # ------------------------------------------------------------------ waiting
    def tick(self) -> None:
        if self.channel is not None:
            self.channel.drain()
        reason = self.watch.check()
        if reason is not None and self.broken is None:
            self.log(f"worker groups failed: {reason}")
            self._break(reason)

    def wait(self, keys: list[str], *, poll_s: float = 0.5) -> dict[str, dict]:
        """Every key's result, ticking meanwhile (Ctrl-C reaches the caller within ``poll_s``)."""
        return wait_for(self.handle, keys, tick=self.tick, poll_s=poll_s)

    def cancel_owner(self, owner: str) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get(self.ledger.cancel_owner.remote(owner))

    def close(self, timeout_s: float = 60.0) -> None:
        """No more items: the slots stop once the queue is empty; wait for their ``fit()``."""
        import ray

        with contextlib.suppress(Exception):
            ray.get(self.ledger.close.remote())
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            while slot.thread is not None and slot.thread.is_alive() and time.monotonic() < deadline:
                self.tick()
                slot.thread.join(timeout=0.5)
        if self.channel is not None:
            self.channel.drain()
            self.channel.close()
        with contextlib.suppress(Exception):
            ray.kill(self.ledger)
        self._mark_ended()

    def _mark_ended(self) -> None:
        """:data:`END_MARKER` in each ``fit()``'s Ray Train folder of every slot whose thread ended
        (not one still running after the timeout); a failed write leaves ``distfair gc`` keeping it."""
        storage = self.storage_path[len("file://"):] if self.storage_path.startswith("file://") else self.storage_path
        if "://" in storage:
            return
        stamp = json.dumps({"ended_at": time.time(), "pid": os.getpid(), "host": socket.gethostname()})
        for slot in self.slots:
            if slot.thread is not None and slot.thread.is_alive():
                continue
            for fit in range(slot.fits):
                folder = Path(storage) / (slot.name if fit == 0 else f"{slot.name}-r{fit}")
                if folder.is_dir() and not folder.is_symlink():
                    with contextlib.suppress(OSError):
                        (folder / END_MARKER).write_text(stamp)

    def abandon(self) -> None:
        """Stop waiting for the slots (Ctrl-C, or the command failing): no restarts, controllers
        stopped; Ray's shutdown ends the rest."""
        import ray

        self.broken = self.broken or "abandoned"
        for slot in self.slots:
            if slot.controller is not None:
                with contextlib.suppress(Exception):
                    ray.kill(slot.controller)
        if self.channel is not None:
            self.channel.close()

    def fit_clock(self) -> list[dict]:
        """Per slot, its first ``fit()``'s wall-clock span so far."""
        return [dict(s.clock[0]) if s.clock else {} for s in self.slots]


def wait_for(handle: PoolHandle, keys: list[str], *, tick: Callable[[], None] = lambda: None,
             poll_s: float = 0.5) -> dict[str, dict]:
    """Poll the ledger until every key has a result."""
    results: dict[str, dict] = {}
    while True:
        tick()
        results.update(handle.results([k for k in keys if k not in results]))
        if len(results) == len(keys):
            tick()                    # the progress lines of the last epochs before the result
            return results
        time.sleep(poll_s)


@contextlib.contextmanager
def pool_ticking(pool: SlotPool | None, every_s: float = 0.5):
    """While open, a daemon thread ticks ``pool`` (for a driver whose main thread is busy
    elsewhere, as a sweep's is in ``Tuner.fit()``)."""
    if pool is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):
                pool.tick()

    thread = threading.Thread(target=run, name="distfair-slots-tick", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


__all__ = ["Ledger", "MAX_EMPTY_FAILURES", "PoolHandle", "SlotPool", "ledger_actor", "pool_ticking", "scaling_key",
           "wait_for"]
