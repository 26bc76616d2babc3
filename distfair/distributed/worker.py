"""The function every Ray Train worker runs: its group's seeds, one after the other.

Rank 0 writes each seed's child run (epoch curves, final metrics, artifacts) through the
logger ``config["seed_logger"](child_run_id)`` the caller passed in (``distfair.experiment.run`` passes
``distfair.tracking.SeedRunLogger``; this package never imports MLflow) and reports a
checkpoint every epoch; every rank calls ``ray.train.report`` the same number of
times (Ray Train synchronises on it). The return value of rank 0 (a list of per-seed result
dicts) arrives in the driver as ``Result.return_value``.

A seed whose training diverges (``distfair.engine.train.Diverged``: the loss became NaN or
infinite) fails alone: its run is closed FAILED with the reason, its entry in the returned
list is ``{"seed": s, "failed": reason}``, and the group goes on with its next seeds.

Fault tolerance: each reported checkpoint holds the engine's epoch checkpoint plus
``progress.json`` (the seed in progress and the results of the seeds already done). When
Ray Train restarts the worker group (``scaling.max_failures``), the loop skips the finished
seeds and resumes the current one from its last epoch.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME, Diverged

PROGRESS = "progress.json"


def _restore(workdir: Path) -> tuple[list[dict], int | None]:
    """Results already done and the seed in progress, from Ray Train's latest checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return [], None
    with checkpoint.as_directory() as ckpt_dir:
        progress = json.loads((Path(ckpt_dir) / PROGRESS).read_text())
        seed = progress["seed"]
        if progress.get("seed_done"):
            return progress["done"], None
        target = workdir / f"seed_{seed}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(ckpt_dir) / CHECKPOINT_NAME, target / CHECKPOINT_NAME)
    return progress["done"], seed


def _report(metrics: dict, files: dict[str, Path | str] | None) -> None:
    """``ray.train.report`` on every rank; rank 0 attaches a checkpoint directory."""
    import ray.train

    if files is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="distfair-ckpt-") as tmp:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copy(content, Path(tmp) / name)
            else:
                (Path(tmp) / name).write_text(content)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report at INFO under a logger named after its file (so
    ``LoggingConfig`` does not reach it); one line per epoch of ours is enough."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _worker_node_ids(world: int) -> list[str]:
    """The Ray node id of every rank (index = world rank), known on every rank: where a group
    really ran goes into each seed's record (``scaling.placement_strategy: SPREAD`` must show
    distinct nodes). A collective, so every rank calls it at the same point."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [node]
    import torch.distributed as dist

    nodes: list = [None] * world
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def _progress_log(progress) -> Callable[[str], None]:
    """Rank 0's progress lines: to this worker's stdout (Ray forwards it to the driver's log
    file) and, structured, to the driver through ``progress`` (a Ray queue, see
    ``distfair.distributed.runner.ProgressChannel``; None: stdout only). Written to
    ``sys.stdout`` directly, not with ``print``: Train V2 copies every ``print`` of a worker to
    stderr through its logger. A lost progress line never stops training."""
    def log(msg: str) -> None:
        sys.stdout.write(f"[distfair] {msg}\n")
        sys.stdout.flush()
        if progress is not None:
            try:
                progress.put({"text": msg})
            except Exception:  # noqa: BLE001 - the driver may be gone (Ctrl-C); training goes on
                pass
    return log


def _seed_diverged(seed: int, reason: str, *, rank: int, logger, log, done: list[dict]) -> None:
    """A seed whose loss became NaN or infinite (``Diverged``, raised by every rank at the same
    epoch's end, so no rank waits in a collective) fails alone: rank 0 closes its run FAILED
    with the reason and adds ``{"seed", "failed": reason}`` to ``done`` (the driver's error for
    it; a restarted group skips it like a finished seed); every rank reports once, as for a
    finished seed, and the group goes on with its next seed."""
    if rank != 0:
        _report({"seed": seed, "seed_done": 1}, None)
        return
    log(f"seed {seed}: FAILED: {reason}")
    logger.log_failure(reason)
    done.append({"seed": seed, "failed": reason})
    _report({"seed": seed, "seed_done": 1}, {PROGRESS: json.dumps({"seed": seed, "seed_done": True, "done": done})})


def train_loop_per_worker(config: dict) -> list[dict] | None:
    import ray.train
    import ray.train.torch

    started_at = time.time()         # wall clock: the driver compares it with its own (scripts/bench_overhead.py)
    _quiet_ray_train_reports()

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    torch.set_num_threads(config["threads_per_worker"])
    cfg, child_runs = config["cfg"], config["child_run_ids"]
    workdir = Path(tempfile.gettempdir()) / "distfair" / config["run_name"] / f"rank{rank}"
    node_ids = _worker_node_ids(world)
    done, resume_seed = _restore(workdir)
    done_seeds = {r["seed"] for r in done}
    log = _progress_log(config.get("progress")) if rank == 0 else None
    if rank == 0 and done:
        log(f"resuming group: seeds {sorted(done_seeds)} already done")

    for seed in config["seeds"]:
        if seed in done_seeds:
            continue
        seed_dir = workdir / f"seed_{seed}"
        if seed != resume_seed and seed_dir.exists():
            shutil.rmtree(seed_dir)          # stale files of an earlier attempt, never reused
        # where a seed's wall time goes besides the math (wall-clock stamps and summed seconds)
        clock = {"worker_started_at": started_at, "seed_started_at": time.time(), "mlflow_epoch_s": 0.0,
                 "report_s": 0.0}
        # log: "tracking server ... unreachable / back" reach the driver's progress output
        logger = config["seed_logger"](child_runs[str(seed)], log=log) if rank == 0 else None
        clock["mlflow_open_s"] = time.time() - clock["seed_started_at"]

        def on_epoch(epoch: int, row: dict, checkpoint: Path | None, seed=seed, logger=logger, clock=clock) -> None:
            metrics = {"seed": seed, **row}
            clock.setdefault("first_epoch_done_at", time.time())
            if rank != 0:
                _report(metrics, None)
                return
            t0 = time.time()
            logger.log_epoch(epoch, row)
            t1 = time.time()
            _report(metrics, {CHECKPOINT_NAME: checkpoint,
                              PROGRESS: json.dumps({"seed": seed, "epoch": epoch, "done": done})})
            clock["mlflow_epoch_s"] += t1 - t0
            clock["report_s"] += time.time() - t1

        try:
            result = run_seed(cfg, seed, workdir=seed_dir, device=device, rank=rank, world=world, on_epoch=on_epoch,
                              init_from=config.get("init_paths", {}).get(str(seed)),
                              references=config.get("references", {}).get(str(seed)),
                              log=log)
        except Diverged as err:
            _seed_diverged(seed, str(err), rank=rank, logger=logger, log=log, done=done)
            shutil.rmtree(seed_dir, ignore_errors=True)
            continue
        if rank == 0:
            clock["seed_computed_at"] = time.time()
            record = result.to_dict()
            record["worker_node_ids"] = node_ids
            record["tags"] = {**(record.get("tags") or {}), "distfair.worker_node_ids": ",".join(node_ids)}
            logger.log_result(record, title=f"{cfg['defense']['name']}, seed {seed}")
            record["final_model_path"] = None      # local to this worker; the copy is in MLflow
            clock["seed_logged_at"] = time.time()
            record["clock"] = clock                # not in MLflow: the driver's timings (runner)
            done.append(record)
            _report({"seed": seed, "seed_done": 1},
                    {PROGRESS: json.dumps({"seed": seed, "seed_done": True, "done": done})})
        else:
            _report({"seed": seed, "seed_done": 1}, None)
        shutil.rmtree(seed_dir, ignore_errors=True)
    return done if rank == 0 else None
