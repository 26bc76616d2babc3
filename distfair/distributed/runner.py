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
import math
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.distributed.layout import plan_seed_groups, worker_resources
from distfair.distributed.session import alive_node_resources
from distfair.distributed.worker import train_loop_per_worker


@dataclass
class ConfigurationOutcome:
    results: dict[int, dict] = field(default_factory=dict)     # seed -> SeedResult dict
    errors: dict[int, str] = field(default_factory=dict)       # seed -> why it has no result
    groups: list[list[int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _fit_group(cfg: dict, seeds: list[int], *, name: str, storage_path: str, seed_logger: Callable,
               child_run_ids: dict[int, str], init_paths: dict[int, str],
               references: dict[int, dict[str, str]], progress=None) -> list[dict]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = cfg["scaling"]
    per_worker = worker_resources(scaling)
    trainer = TorchTrainer(
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


def _run_in_daemon_threads(jobs: list[Callable[[], list[dict]]], tick: Callable[[], None] = lambda: None):
    """Run each job in a daemon thread; yield ``(index, result, error)`` as they finish.

    Daemon threads, not a thread pool: on Ctrl-C the command marks its runs KILLED and shuts
    Ray down, and must then exit without joining threads still blocked inside ``fit()``. The
    main thread wakes twice a second so a signal is acted on promptly, and calls ``tick``
    each time (and before each result is handed over).
    """
    done: queue.Queue = queue.Queue()

    def target(index: int, job) -> None:
        try:
            done.put((index, job(), None))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            done.put((index, None, err))

    for i, job in enumerate(jobs):
        threading.Thread(target=target, args=(i, job), name=f"distfair-group-{i}", daemon=True).start()
    for _ in jobs:
        while True:
            try:
                item = done.get(timeout=0.5)
            except queue.Empty:
                tick()
                continue
            tick()
            yield item
            break


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
    jobs = [functools.partial(_fit_group, cfg, group, name=f"{run_name}-g{i}", storage_path=str(storage_path),
                              seed_logger=seed_logger, child_run_ids=child_run_ids,
                              init_paths=init_paths or {}, references=references or {}, progress=channel.queue)
            for i, group in enumerate(outcome.groups)]
    try:
        for index, records, err in _run_in_daemon_threads(jobs, tick=channel.drain):
            group = outcome.groups[index]
            if err is not None:
                reason = f"{type(err).__name__}: {err}"
                log(f"worker group with seeds {group} failed: {reason}")
            for record in records or []:
                outcome.results[record["seed"]] = record
            for seed in group:
                if seed not in outcome.results:
                    outcome.errors.setdefault(seed, reason if err is not None else "no result returned")
    finally:
        channel.close()
    return outcome
