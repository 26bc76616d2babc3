"""The function every Ray Train worker runs: its slot's items, one after the other.

A slot (:mod:`distfair.distributed.slots`) is one ``TorchTrainer.fit()``; its train function
takes (configuration, seed) items from the command's ledger until the ledger says stop. Rank 0
leases each item and hands it to the other ranks (a broadcast), so every rank runs the same item.

Rank 0 writes each seed's child run (epoch curves, final metrics, artifacts) through the
item's logger ``item["seed_logger"](child_run_id)`` (``distfair.experiment.run`` passes
``distfair.tracking.SeedRunLogger``; this package never imports MLflow), reports a checkpoint
every epoch, and completes the item in the ledger with its result record. Every rank calls
``ray.train.report`` the same number of times (Ray Train synchronises on it).

A seed whose training diverges (``distfair.engine.train.Diverged``: the loss became NaN or
infinite) fails alone: its run is closed FAILED with the reason, its result is
``{"seed": s, "failed": reason}``, and the slot goes on with its next item.

Fault tolerance: each reported checkpoint holds the engine's epoch checkpoint plus
``progress.json`` naming the item and epoch. When Ray Train restarts the worker group
(``scaling.max_failures``), the ledger leases the slot the same item again, and the item resumes
from that checkpoint if the checkpoint is the item's own (Ray Train's latest checkpoint may be
a previous item's).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME, Diverged

PROGRESS = "progress.json"

#: fault injection for the tests, read from the environment of the process that queues the seeds
#: (the driver, or a sweep's trial) and handed to the workers in each item, so that it reaches
#: the workers of a cluster started elsewhere and slots started before it was set:
#: ``"<seed>:<epoch>"`` (``"<seed>:<epoch>:outage"``: once the tracking server is away, too)
#: makes rank 0 of the group running that seed, once that epoch's checkpoint
#: (epochs counted from 1) is the one Ray Train would restart from and on the seed's first attempt
#: only, SIGKILL itself (``tests/test_worker_faults.py``) or pause for up to ten minutes, saying
#: so, while the test kills its node (``tests/test_multinode.py``). No timing windows.
KILL_WORKER_AT = "DISTFAIR_TEST_KILL_WORKER_AT"
PAUSE_WORKER_AT = "DISTFAIR_TEST_PAUSE_WORKER_AT"
TEST_HOOKS = (KILL_WORKER_AT, PAUSE_WORKER_AT)


def scratch_dir(run_name: str, rank: int, seed: int, tmp: str | Path | None = None) -> Path:
    """A new folder, this user's alone, for one seed's epoch checkpoint on this node:
    ``tempfile.mkdtemp`` (mode 0700, a name no one can guess) inside ``<tmp>/distfair-<uid>``,
    made 0700 on first use. That folder is used only if it is a real folder (not a symlink)
    owned by this user with no access for others; otherwise (another user made it first) the
    seed's folder is made directly in ``tmp``. Folders of the same run, rank and seed that a
    killed earlier attempt left in it are removed first.

    The path used to be ``<tmp>/distfair/<run>/rank<r>/seed_<s>``: another user of the node
    could make it first, read or replace the checkpoint between epochs, or turn a part of it
    into a symlink so that the cleanup deleted a folder of the user's elsewhere."""
    tmp = Path(tmp if tmp is not None else tempfile.gettempdir())
    uid = os.geteuid()
    prefix = f"{re.sub(r'[^A-Za-z0-9._-]', '_', str(run_name))[:80]}-rank{rank}-seed{seed}-"
    own: Path | None = tmp / f"distfair-{uid}"
    try:
        os.mkdir(own, 0o700)
    except FileExistsError:
        pass
    except OSError:
        own = None
    if own is not None:
        info = os.lstat(own)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
            own = None                      # not ours alone: never write into it, never delete in it
        else:
            for stale in own.glob(prefix + "*"):
                shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=own or tmp))


def _restore(key: str, seed_dir: Path) -> int | None:
    """The epoch the item ``key`` resumes after, its checkpoint copied into ``seed_dir``; None
    when Ray Train's latest checkpoint is not this item's (or there is none)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        progress = json.loads((Path(ckpt_dir) / PROGRESS).read_text())
        if progress.get("item") != key or not (Path(ckpt_dir) / CHECKPOINT_NAME).exists():
            return None
        seed_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(ckpt_dir) / CHECKPOINT_NAME, seed_dir / CHECKPOINT_NAME)
    return int(progress["epoch"])


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


class _Cancelled(Exception):
    """The item's owner was stopped (a sweep trial stopped early): leave the item."""


def _share(obj, world: int):
    """Rank 0's ``obj`` on every rank (a collective: every rank calls it at the same point)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _next_item(ledger, slot: int, rank: int, world: int) -> tuple[dict | None, int]:
    """(item, attempt) from the ledger (rank 0 asks, every rank gets it); (None, 0): stop."""
    import ray

    msg = None
    if rank == 0:
        while True:
            kind, item, attempt = ray.get(ledger.lease.remote(slot))
            if kind != "wait":
                msg = (item, attempt)
                break
            time.sleep(0.2)
    return _share(msg, world)


def slot_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    started_at = time.time()         # wall clock: the driver compares it with its own (scripts/bench_overhead.py)
    _quiet_ray_train_reports()

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    torch.set_num_threads(config["threads_per_worker"])
    ledger, slot = config["ledger"], config["slot"]
    node_ids = _worker_node_ids(world)
    log = _progress_log(config.get("progress")) if rank == 0 else None

    while True:
        item, attempt = _next_item(ledger, slot, rank, world)
        if item is None:
            return
        item = {**item, "hooks": item.get("hooks") or {},
                "snapshot": Path(config["storage_path"]) / config["run_name"] / "checkpoint_manager_snapshot.json"}
        record = _run_item(item, attempt, rank=rank, world=world, device=device, node_ids=node_ids, log=log,
                           ledger=ledger, started_at=started_at)
        if rank == 0:
            record["slot"] = slot
            ray.get(ledger.complete.remote(slot, item["key"], record))


def _run_item(item: dict, attempt: int, *, rank: int, world: int, device, node_ids: list[str], log, ledger,
              started_at: float) -> dict:
    """Train and evaluate one seed of one configuration; rank 0's result record (others: {})."""
    import ray

    seed, key = item["seed"], item["key"]
    seed_dir = scratch_dir(item["run_name"], rank, seed)     # new and private: an earlier attempt's never reused
    resumed = _restore(key, seed_dir) if attempt > 1 else None
    if rank == 0 and attempt > 1:
        log(f"seed {seed}: worker group restarted (attempt {attempt}), "
            + ("from the seed's last epoch checkpoint" if resumed is not None else "the seed starts over"))
    # where a seed's wall time goes besides the math (wall-clock stamps and summed seconds)
    clock = {"worker_started_at": started_at, "seed_started_at": time.time(), "mlflow_epoch_s": 0.0,
             "report_s": 0.0}
    # log: "tracking server ... unreachable / back" reach the driver's progress output
    logger = item["seed_logger"](item["child_run_id"], log=log) if rank == 0 else None
    clock["mlflow_open_s"] = time.time() - clock["seed_started_at"]

    def on_epoch(epoch: int, row: dict, checkpoint: Path | None) -> None:
        metrics = {"seed": seed, **row}
        clock.setdefault("first_epoch_done_at", time.time())
        if rank == 0:
            t0 = time.time()
            logger.log_epoch(epoch, row)
            logger.journal()             # fsync'd before the checkpoint a restart would resume from
            t1 = time.time()
            _report(metrics, {CHECKPOINT_NAME: checkpoint, PROGRESS: json.dumps({"item": key, "epoch": epoch})})
            clock["mlflow_epoch_s"] += t1 - t0
            clock["report_s"] += time.time() - t1
        else:
            _report(metrics, None)
        hooks = [(h, at) for h, at in item["hooks"].items() if at.split(":")[:2] == [str(seed), str(epoch + 1)]]
        if rank == 0 and attempt == 1 and hooks:
            hook, at = hooks[0]
            outage = logger.server_away if at.endswith(":outage") else None
            _hook_once_registered(hook, item["snapshot"], seed, epoch, log, outage=outage)
        if _share(ray.get(ledger.is_cancelled.remote(key)) if rank == 0 else None, world):
            raise _Cancelled(key)

    try:
        return _train_item(item, seed_dir, rank=rank, world=world, device=device, node_ids=node_ids, log=log,
                           logger=logger, clock=clock, on_epoch=on_epoch)
    finally:
        shutil.rmtree(seed_dir, ignore_errors=True)


def _hook_once_registered(hook: str, snapshot: Path, seed: int, epoch: int, log, outage=None) -> None:
    """A :data:`TEST_HOOKS` hook: wait (at most a minute) until Ray Train's controller has
    registered this epoch's checkpoint (its ``checkpoint_manager_snapshot.json``), then SIGKILL
    this worker or pause it. ``outage`` (the hook's value ends in ``:outage``): first wait (at
    most two minutes) until this callable says the tracking server is away, so that the worker
    dies with writes buffered (``tests/test_tracking_outage.py``)."""
    deadline = time.monotonic() + 120
    while outage is not None and not outage() and time.monotonic() < deadline:
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            latest = json.loads(Path(snapshot).read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):          # not written yet, or being rewritten
            latest = {}
        if (latest.get("metrics") or {}).get("seed") == seed and latest["metrics"].get("epoch") == epoch:
            break
        time.sleep(0.05)
    if hook == KILL_WORKER_AT:
        log(f"test hook {hook}: killing this worker after seed {seed}'s epoch {epoch + 1} checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    log(f"test hook {hook}: pausing this worker after seed {seed}'s epoch {epoch + 1} checkpoint")
    time.sleep(600)


def _train_item(item: dict, seed_dir: Path, *, rank: int, world: int, device, node_ids: list[str], log, logger,
                clock: dict, on_epoch) -> dict:
    cfg, seed = item["cfg"], item["seed"]
    try:
        result = run_seed(cfg, seed, workdir=seed_dir, device=device, rank=rank, world=world, on_epoch=on_epoch,
                          init_from=item.get("init_path"), references=item.get("references"), log=log)
    except Diverged as err:
        if rank == 0:
            log(f"seed {seed}: FAILED: {err}")
            logger.log_failure(str(err))
        return {"seed": seed, "failed": str(err)}
    except _Cancelled:
        if rank == 0:
            log(f"seed {seed}: left, its configuration was stopped")
        return {"seed": seed, "failed": "cancelled"}
    if rank != 0:
        return {}
    clock["seed_computed_at"] = time.time()
    record = result.to_dict()
    record["worker_node_ids"] = node_ids
    record["tags"] = {**(record.get("tags") or {}), "distfair.worker_node_ids": ",".join(node_ids)}
    logger.log_result(record, title=f"{cfg['defense']['name']}, seed {seed}")
    record["final_model_path"] = None      # local to this worker; the copy is in MLflow
    clock["seed_logged_at"] = time.time()
    record["clock"] = clock                # not in MLflow: the driver's timings (runner)
    return record
