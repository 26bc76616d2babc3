"""Run the seeds of one configuration on Ray Train and hand back their results.

Each worker group is one ``TorchTrainer.fit()`` (DDP over ``scaling.num_workers`` workers),
driven from its own thread of this process. This function is also what a Ray Tune trial
calls for its configuration (a Tune function trainable may drive Train itself; ray.md).

The seeds to run are ``cfg["seeds"]`` (the one list, set by the caller). The record is not
written here: the caller passes ``seed_logger``, a picklable factory (e.g.
``functools.partial(distfair.tracking.SeedRunLogger, uri)``) that rank 0 of each worker calls
with a seed's child run id, so this package never imports MLflow (``distfair.tracking``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.distributed.layout import InsufficientResources, concurrent_groups, plan_seed_groups, worker_resources
from distfair.distributed.session import alive_node_resources
from distfair.distributed.worker import train_loop_per_worker


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


def _abortable_trainer(on_controller: Callable | None):
    """``TorchTrainer`` that hands its Train controller's actor handle to ``on_controller``, so
    the driver can kill the controller of a group it gave up on (:func:`lost_node_reason`):
    ``fit()`` then returns in its thread instead of staying blocked when Ray shuts down (a
    thread blocked there crashed the interpreter on exit). The body is Ray 2.60's
    ``DataParallelTrainer._initialize_and_run_controller`` (Ray is pinned) without its SIGINT
    handler, which it only registers on the main thread and groups never run there."""
    from ray.train.torch import TorchTrainer

    if on_controller is None:
        return TorchTrainer

    class AbortableTorchTrainer(TorchTrainer):
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

    return AbortableTorchTrainer


def _fit_group(cfg: dict, seeds: list[int], *, name: str, storage_path: str, seed_logger: Callable,
               child_run_ids: dict[int, str], init_paths: dict[int, str],
               references: dict[int, dict[str, str]], progress=None,
               on_controller: Callable | None = None) -> list[dict]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    scaling = cfg["scaling"]
    per_worker = worker_resources(scaling)
    trainer = _abortable_trainer(on_controller)(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg, "seeds": seeds, "run_name": name, "seed_logger": seed_logger,
            "child_run_ids": {str(s): child_run_ids[s] for s in seeds}, "use_gpu": scaling["use_gpu"],
            "init_paths": {str(s): init_paths[s] for s in seeds if s in init_paths},
            "references": {str(s): references[s] for s in seeds if s in references},
            "threads_per_worker": max(1, math.floor(per_worker.get("CPU", 1.0))),
            "progress": progress,
        },
        scaling_config=ScalingConfig(num_workers=scaling["num_workers"], use_gpu=scaling["use_gpu"],
                                     resources_per_worker=per_worker,
                                     placement_strategy=scaling["placement_strategy"]),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=scaling["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    result = trainer.fit()
    return list(result.return_value or [])


def _timed(job: Callable[[], list[dict]], clock: dict) -> list[dict]:
    clock["fit_started_at"] = time.time()
    try:
        return job()
    finally:
        clock["fit_ended_at"] = time.time()


def timings_line(outcome: ConfigurationOutcome) -> str:
    """One line for the log file saying where a configuration's time went: each group's
    ``fit()`` span and each seed's stamps (``scripts/bench_overhead.py`` reads it back)."""
    seeds = {str(s): {**r["clock"], **(r.get("timings") or {}),
                      "first_epoch_s": (r.get("history") or [{}])[0].get("epoch_time_s")}
             for s, r in outcome.results.items() if r.get("clock")}
    return "[distfair timings] " + json.dumps({"groups": [{"seeds": g, **c} for g, c in
                                                         zip(outcome.groups, outcome.group_clock)], "seeds": seeds})


def _run_in_daemon_threads(jobs: list[Callable[[], list[dict]]], tick: Callable[[], None] = lambda: None,
                           abandoned: set[int] | None = None, abandon_grace_s: float = 30.0):
    """Run each job in a daemon thread; yield ``(index, result, error)`` as they finish.

    Daemon threads, not a thread pool: on Ctrl-C the command marks its runs KILLED and shuts
    Ray down, and must then exit without joining threads still blocked inside ``fit()``. The
    main thread wakes twice a second so a signal is acted on promptly, and calls ``tick``
    each time (and before each result is handed over). An index that ``tick`` adds to
    ``abandoned`` is no longer waited for and its late result (if any) is dropped: the caller
    has given up on it (a lost node, :func:`lost_node_reason`) and its daemon thread is left
    blocked in ``fit()`` like on Ctrl-C.
    """
    abandoned = set() if abandoned is None else abandoned
    done: queue.Queue = queue.Queue()

    def target(index: int, job) -> None:
        try:
            done.put((index, job(), None))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            done.put((index, None, err))

    for i, job in enumerate(jobs):
        threading.Thread(target=target, args=(i, job), name=f"distfair-group-{i}", daemon=True).start()
    waiting = set(range(len(jobs)))
    while waiting - abandoned:
        try:
            item = done.get(timeout=0.5)
        except queue.Empty:
            tick()
            continue
        tick()
        waiting.discard(item[0])
        if item[0] not in abandoned:
            yield item
    # give the abandoned threads (their controllers killed by the caller) a moment to leave fit()
    deadline = time.monotonic() + abandon_grace_s
    while waiting and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            waiting.discard(done.get(timeout=0.5)[0])


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

        self.log = log
        self.queue = Queue(actor_options={"num_cpus": 0}) if ray.get_runtime_context().get_actor_id() is None \
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
                      log: Callable[[str], None] = print) -> ConfigurationOutcome:
    """Train and evaluate every seed of ``cfg["seeds"]``; their child runs must already exist
    (``child_run_ids``), and ``seed_logger(child_run_id)`` writes one on rank 0.

    ``run_name`` must be deterministic for the configuration (never a timestamp): Ray Train
    resumes a group from ``(storage_path, name)``. A group that fails does not stop the
    others; its seeds without a result are listed in ``errors``. ``references`` (seed ->
    {name: local file}, resolved by the caller) reach the defense as ``DefenseContext.references``.
    """
    import ray

    seeds = list(cfg["seeds"])
    outcome = ConfigurationOutcome()
    outcome.groups = plan_seed_groups(seeds, cfg["scaling"], dict(ray.cluster_resources()), alive_node_resources())
    log(f"{len(seeds)} seed(s) in {len(outcome.groups)} concurrent worker group(s) of "
        f"{cfg['scaling']['num_workers']} worker(s): " + " | ".join(",".join(map(str, g)) for g in outcome.groups))
    channel = ProgressChannel(log)
    outcome.group_clock = [{} for _ in outcome.groups]
    controllers: dict[int, object] = {}        # group index -> its Train controller's actor handle
    jobs = [functools.partial(_timed, functools.partial(
                _fit_group, cfg, group, name=f"{run_name}-g{i}", storage_path=str(storage_path),
                seed_logger=seed_logger, child_run_ids=child_run_ids, init_paths=init_paths or {},
                references=references or {}, progress=channel.queue,
                on_controller=functools.partial(controllers.__setitem__, i)), outcome.group_clock[i])
            for i, group in enumerate(outcome.groups)]
    watch, finished, abandoned = _NodeWatch(cfg["scaling"]), set(), set()

    def tick() -> None:
        channel.drain()
        reason = watch.check()
        if reason is None:
            return
        for i, group in enumerate(outcome.groups):
            if i not in finished and i not in abandoned:
                abandoned.add(i)
                log(f"worker group with seeds {group} failed: {reason}")
                for seed in group:
                    outcome.errors.setdefault(seed, reason)
                if i in controllers:          # fit() returns instead of retrying the start forever
                    with contextlib.suppress(Exception):
                        ray.kill(controllers[i])

    try:
        for index, records, err in _run_in_daemon_threads(jobs, tick=tick, abandoned=abandoned):
            finished.add(index)
            group = outcome.groups[index]
            if err is not None:
                reason = f"{type(err).__name__}: {err}"
                log(f"worker group with seeds {group} failed: {reason}")
            for record in records or []:
                if "failed" in record:           # diverged: failed alone, its group went on
                    outcome.errors[record["seed"]] = record["failed"]
                else:
                    outcome.results[record["seed"]] = record
            for seed in group:
                if seed not in outcome.results:
                    outcome.errors.setdefault(seed, reason if err is not None else "no result returned")
    finally:
        channel.close()
    # to this process's stdout: the log file while a command runs (distfair.distributed.session)
    print(timings_line(outcome), file=sys.stdout, flush=True)
    return outcome
