"""Run the seeds of one configuration on Ray Train and hand back their results.

The seeds become items of a slot pool (:mod:`distfair.distributed.slots`): long-lived worker
groups, one ``TorchTrainer.fit()`` each (DDP over ``scaling.num_workers`` workers), driven from
daemon threads of the process that owns the pool. :func:`run_configuration` is also what a Ray
Tune trial calls for its configuration, with the handle of the sweep's pool.

The seeds to run are ``cfg["seeds"]`` (the one list, set by the caller). The record is not
written here: the caller passes ``seed_logger``, a picklable factory (e.g.
``functools.partial(distfair.tracking.SeedRunLogger, uri)``) that rank 0 of each worker calls
with a seed's child run id, so this package never imports MLflow (``distfair.tracking``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.distributed.layout import InsufficientResources, concurrent_groups, worker_resources
from distfair.distributed.worker import TEST_HOOKS, slot_loop_per_worker


@dataclass
class ConfigurationOutcome:
    results: dict[int, dict] = field(default_factory=dict)     # seed -> SeedResult dict
    errors: dict[int, str] = field(default_factory=dict)       # seed -> why it has no result (a diverged
                                                               # seed: "loss is nan at epoch e, batch b")
    groups: list[list[int]] = field(default_factory=list)
    #: per group: the wall-clock start and end of its ``fit()`` in this process
    #: (``fit_started_at``, ``fit_ended_at``); each seed's own stamps are in its record's ``clock``
    group_clock: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _abortable_trainer(on_controller: Callable | None, *, torch_backend: bool = True):
    """``TorchTrainer`` that hands its Train controller's actor handle to ``on_controller``, so
    the driver can kill the controller of a group it gave up on (:func:`lost_node_reason`):
    ``fit()`` then returns in its thread instead of staying blocked when Ray shuts down (a
    thread blocked there crashed the interpreter on exit). The body is Ray 2.60's
    ``DataParallelTrainer._initialize_and_run_controller`` (Ray is pinned) without its SIGINT
    handler, which it only registers on the main thread and groups never run there.

    ``torch_backend=False``: Ray Train's plain ``DataParallelTrainer`` instead, with no torch
    process group; for a single CPU worker, which never makes a collective call (every one in
    distfair is guarded by ``world > 1``) and so skips the backend's set-up
    (``scripts/bench_group_start.py`` measures it)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    base = TorchTrainer if torch_backend else DataParallelTrainer
    if on_controller is None:
        return base

    class Trainer(base):
        def _initialize_and_run_controller(self, **controller_init_kwargs):
            import ray
            from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
            from ray.train.v2._internal.constants import (DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
                                                          get_env_vars_to_propagate)
            from ray.train.v2._internal.execution.controller import TrainController

            env_vars = get_env_vars_to_propagate()
            env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                                DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
            controller = ray.remote(
                num_cpus=0, label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
                runtime_env={"env_vars": env_vars})(TrainController).remote(**controller_init_kwargs)
            on_controller(controller)
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())

    Trainer.__name__ = Trainer.__qualname__ = f"Abortable{base.__name__}"
    return Trainer


def fit_slot(scaling: dict, *, slot: int, name: str, storage_path: str, ledger, progress=None,
             on_controller: Callable | None = None) -> None:
    """One ``fit()`` of a slot (:mod:`distfair.distributed.slots`): its workers take items from
    ``ledger`` until it says stop. Raises what ``fit()`` raises once Ray Train gave up."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    per_worker = worker_resources(scaling)
    # a single CPU worker needs no torch process group (see _abortable_trainer)
    torch_backend = bool(scaling["use_gpu"]) or scaling["num_workers"] > 1
    trainer = _abortable_trainer(on_controller, torch_backend=torch_backend)(
        slot_loop_per_worker,
        train_loop_config={
            "ledger": ledger, "slot": slot, "run_name": name, "storage_path": storage_path,
            "use_gpu": scaling["use_gpu"],
            "threads_per_worker": max(1, math.floor(per_worker.get("CPU", 1.0))), "progress": progress,
        },
        scaling_config=ScalingConfig(num_workers=scaling["num_workers"], use_gpu=scaling["use_gpu"],
                                     resources_per_worker=per_worker,
                                     placement_strategy=scaling["placement_strategy"]),
        # one checkpoint kept, ranked by nothing: a score across items would be meaningless
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=scaling["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    trainer.fit()


def timings_line(outcome: ConfigurationOutcome) -> str:
    """One line for the log file saying where a configuration's time went: each slot's
    ``fit()`` span (so far) and each seed's stamps (``scripts/bench_overhead.py`` reads it back)."""
    seeds = {str(s): {**r["clock"], **(r.get("timings") or {}),
                      "first_epoch_s": (r.get("history") or [{}])[0].get("epoch_time_s")}
             for s, r in outcome.results.items() if r.get("clock")}
    return "[distfair timings] " + json.dumps({"groups": [{"seeds": g, **c} for g, c in
                                                         zip(outcome.groups, outcome.group_clock)], "seeds": seeds})


class ProgressChannel:
    """Rank 0 of every worker group sends its progress lines (``epoch k/n`` with its metrics,
    ``evaluated ...``) to the driver through a Ray queue; the driver, the only writer to the
    terminal, prints them with its own ``log`` in the order each seed produced them. Worker
    stdout is not the channel: Ray forwards it deduplicated, reordered between processes and
    (Train V2) twice, so it only goes to the log file.

    Made by the driver process itself (a Tune trial is an actor: its lines go to the log file
    through its stdout and the sweep shows configurations instead). The queue is an actor
    holding no CPU, so it never takes a worker's place."""

    def __init__(self, log: Callable[[str], None]):
        import ray
        from ray.util.queue import Queue

        from distfair.distributed.slots import on_this_node

        self.log = log
        self.queue = Queue(actor_options={"num_cpus": 0, **on_this_node()}) \
            if ray.get_runtime_context().get_actor_id() is None \
            else None

    def drain(self) -> None:
        if self.queue is None:
            return
        try:
            pending = self.queue.qsize()
            items = self.queue.get_nowait_batch(pending) if pending else []
        except Exception as err:  # noqa: BLE001 - progress is never worth failing the run for
            self.queue = None
            self.log(f"progress lines lost ({type(err).__name__}); the workers' lines are in the log file")
            return
        for item in items:
            self.log(item["text"])

    def close(self) -> None:
        if self.queue is not None:
            with contextlib.suppress(Exception):      # Ray may already be down (Ctrl-C)
                self.queue.shutdown(force=True)


#: seconds between two comparisons of the cluster's nodes with those alive at the start
#: (``ray.nodes()`` asks the GCS; a lost node is noticed within this, not within Train's 60 s retries)
NODE_CHECK_INTERVAL_S = 5.0


def _node_name(node: dict) -> str:
    return f"{node['NodeID'][:8]} ({node.get('NodeManagerAddress') or '?'})"


def _resources_text(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {float(v)}" for k, v in resources.items()) + "}"


def _workers_that_fit(per_worker: dict[str, float], nodes: list[dict[str, float]], strategy: str) -> int:
    """How many identical workers the nodes hold at once (exact for identical bundles: each node
    independently holds ``floor(min_k node[k] / need[k])``); STRICT_SPREAD puts at most one per
    node, STRICT_PACK all on one."""
    per_node = [min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items()) for node in nodes]
    if strategy == "STRICT_SPREAD":
        return sum(min(1, n) for n in per_node)
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    return sum(per_node)


def lost_node_reason(start_nodes: list[dict], alive_nodes: list[dict], scaling: dict) -> str | None:
    """Why a worker group of ``scaling`` can no longer run after a node was lost, or None.

    ``start_nodes`` are the nodes alive when the configuration started, ``alive_nodes`` those
    alive now (both ``ray.nodes()`` entries: ``NodeID``, ``NodeManagerAddress``, ``Resources``).
    None while no start node is gone, or while one group (``num_workers`` x
    :func:`~distfair.distributed.layout.worker_resources`) still fits on the alive nodes: Ray
    Train then restarts the group there (``scaling.max_failures``). Otherwise Train V2 would retry
    the group's start forever (``WorkerGroupStartupTimeoutError`` every 60 s), so the caller
    gives up on it with this message. Pure: unit-tested without Ray.
    """
    alive_ids = {n["NodeID"] for n in alive_nodes}
    lost = [n for n in start_nodes if n["NodeID"] not in alive_ids]
    if not lost:
        return None
    per_worker = worker_resources(scaling)
    resources = [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in alive_nodes]
    total: dict[str, float] = {}
    for node in resources:
        for key, value in node.items():
            total[key] = total.get(key, 0.0) + value
    try:
        concurrent_groups(scaling, total, resources)     # the same fit the seed layout was planned with
        fits = _workers_that_fit(per_worker, resources, scaling.get("placement_strategy", "PACK")) \
            >= scaling["num_workers"]
    except InsufficientResources:
        fits = False
    if fits:
        return None
    have = ", ".join(f"{_node_name(n)} {_resources_text({k: r.get(k, 0.0) for k in per_worker})}"
                     for n, r in zip(alive_nodes, resources)) or "nothing"
    return (f"node {', '.join(_node_name(n) for n in lost)} was lost; a worker group needs "
            f"{scaling['num_workers']} worker(s) x {_resources_text(per_worker)} and the alive nodes have {have}")


class _NodeWatch:
    """The driver's periodic look at the cluster (every :data:`NODE_CHECK_INTERVAL_S`)."""

    def __init__(self, scaling: dict):
        self.scaling = scaling
        self.start = self._alive()
        self.next_check = time.monotonic() + NODE_CHECK_INTERVAL_S

    @staticmethod
    def _alive() -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def check(self) -> str | None:
        if time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + NODE_CHECK_INTERVAL_S
        try:
            alive = self._alive()
        except Exception:  # noqa: BLE001 - the GCS briefly unreachable is no reason to fail a run
            return None
        return lost_node_reason(self.start, alive, self.scaling)


def run_configuration(cfg: dict, *, child_run_ids: dict[int, str], seed_logger: Callable, run_name: str,
                      storage_path: str | Path, init_paths: dict[int, str] | None = None,
                      references: dict[int, dict[str, str]] | None = None,
                      log: Callable[[str], None] = print, pool=None, owner: str | None = None) -> ConfigurationOutcome:
    """Train and evaluate every seed of ``cfg["seeds"]``; their child runs must already exist
    (``child_run_ids``), and ``seed_logger(child_run_id)`` writes one on rank 0.

    The seeds go to ``pool``'s slots (a :class:`~distfair.distributed.slots.SlotPool` of this
    process, or the :class:`~distfair.distributed.slots.PoolHandle` of the command's pool, which a
    sweep trial gets); without one, a pool is started for this configuration and closed after it.
    ``run_name`` must be unique for the configuration's attempt: it names the seeds' items (and
    their working folders). A seed that fails does not stop the others; the seeds without a result
    are listed in ``errors``. ``references`` (seed -> {name: local file}, resolved by the caller)
    reach the defense as ``DefenseContext.references``. ``owner`` (a sweep trial) lets the command
    cancel the items of a configuration it stopped.
    """
    from distfair.distributed.slots import SlotPool, wait_for

    seeds = list(cfg["seeds"])
    if not seeds:
        raise ValueError("no seeds to run")
    own = pool is None
    if own:
        pool = SlotPool(cfg["scaling"], storage_path=str(storage_path), log=log, slots=len(seeds),
                        name=f"{run_name}-slots")
    handle = pool.handle if isinstance(pool, SlotPool) else pool
    outcome = ConfigurationOutcome()
    items = [{"key": f"{run_name}/seed{s}", "owner": owner or run_name, "seed": s, "run_name": run_name,
              "cfg": {**cfg, "seeds": [s]}, "child_run_id": child_run_ids[s], "seed_logger": seed_logger,
              "init_path": (init_paths or {}).get(s), "references": (references or {}).get(s),
              # read where the seeds are queued, so a hook set for this command reaches slots started before it
              "hooks": {h: os.environ[h] for h in TEST_HOOKS if os.environ.get(h)}} for s in seeds]
    keys = [item["key"] for item in items]
    try:
        handle.submit(items)
        log(f"{len(seeds)} seed(s) queued for {handle.slots} worker group(s) of {handle.num_workers} worker(s) "
            f"that stay up for the command: {','.join(map(str, seeds))}")
        results = pool.wait(keys) if isinstance(pool, SlotPool) else wait_for(handle, keys)
    except BaseException:
        if own:
            pool.abandon()
        raise
    if own:
        pool.close()
    by_slot: dict[int, list[int]] = {}
    for seed, key in zip(seeds, keys):
        record = results[key]
        if "failed" in record:
            outcome.errors[seed] = record["failed"]
            log(f"seed {seed} failed: {record['failed']}")
        else:
            outcome.results[seed] = record
            by_slot.setdefault(record.get("slot", 0), []).append(seed)
    clocks = pool.fit_clock() if isinstance(pool, SlotPool) else []
    outcome.groups = [by_slot[i] for i in sorted(by_slot)]
    outcome.group_clock = [clocks[i] if i < len(clocks) else {} for i in sorted(by_slot)]
    # to this process's stdout: the log file while a command runs (distfair.distributed.session)
    print(timings_line(outcome), file=sys.stdout, flush=True)
    return outcome
