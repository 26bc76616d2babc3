"""The function every Ray Train worker runs: its group's seeds, one after the other.

Rank 0 writes each seed's child run (epoch curves, final metrics, artifacts) through the
logger ``config["seed_logger"](child_run_id)`` the caller passed in (``distfair.run`` passes
``distfair.tracking.SeedRunLogger``; this package never imports MLflow) and reports a
checkpoint every epoch; every rank calls ``ray.train.report`` the same number of
times (Ray Train synchronises on it). The return value of rank 0 (a list of per-seed result
dicts) arrives in the driver as ``Result.return_value``.

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
from pathlib import Path
from typing import Callable

import torch

from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME

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


def train_loop_per_worker(config: dict) -> list[dict] | None:
    import ray.train
    import ray.train.torch

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
        logger = config["seed_logger"](child_runs[str(seed)]) if rank == 0 else None

        def on_epoch(epoch: int, row: dict, checkpoint: Path | None, seed=seed, logger=logger) -> None:
            metrics = {"seed": seed, **row}
            if rank != 0:
                _report(metrics, None)
                return
            logger.log_epoch(epoch, row)
            _report(metrics, {CHECKPOINT_NAME: checkpoint,
                              PROGRESS: json.dumps({"seed": seed, "epoch": epoch, "done": done})})

        result = run_seed(cfg, seed, workdir=seed_dir, device=device, rank=rank, world=world, on_epoch=on_epoch,
                          init_from=config.get("init_paths", {}).get(str(seed)),
                          references=config.get("references", {}).get(str(seed)),
                          log=log)
        if rank == 0:
            record = result.to_dict()
            record["worker_node_ids"] = node_ids
            record["tags"] = {**(record.get("tags") or {}), "distfair.worker_node_ids": ",".join(node_ids)}
            logger.log_result(record, title=f"{cfg['defense']['name']}, seed {seed}")
            record["final_model_path"] = None      # local to this worker; the copy is in MLflow
            done.append(record)
            _report({"seed": seed, "seed_done": 1},
                    {PROGRESS: json.dumps({"seed": seed, "seed_done": True, "done": done})})
        else:
            _report({"seed": seed, "seed_done": 1}, None)
        shutil.rmtree(seed_dir, ignore_errors=True)
    return done if rank == 0 else None
