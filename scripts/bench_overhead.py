"""Orchestration overhead of ``distfair run`` and ``distfair sweep`` against a plain PyTorch loop
(issue 16, first part).

Runs the same configurations and seeds two ways in one invocation:
  * plain     -- one process, no Ray, no MLflow: ``distfair.engine.run_seed`` for each seed, one
                 after another (the math alone: training, validation and test evaluation)
  * distfair  -- ``distfair run CONFIG`` and ``distfair sweep SWEEP`` as a user runs them (embedded
                 default: a local Ray instance each, a fresh SQLite MLflow store and storage path
                 in a scratch directory)
The sweep goes first; its plain loop then trains exactly the configurations (read back from the
sweep's ``--json`` result) and seeds the sweep ran.

Printed: the wall times and their ratios, and the fixed cost split into its parts, every part
from real timestamps: the arrival time of each line the command prints (imports, Ray start-up,
driver-side MLflow set-up, the driver's summary and figure, shutdown), and the wall-clock stamps
and durations each seed's worker records (``clock`` in the records ``distfair.distributed.runner``
writes to the log file as ``[distfair timings] {...}``: worker group start-up, seed set-up with
data and model, training, evaluation, MLflow writes, Ray Train checkpoint reports, group
teardown). The seed figures' share of the MLflow writes is measured by drawing them for the
plain loop's results. Timings are printed, never asserted.

    python scripts/bench_overhead.py [--config tune_spaces/quickstart.yaml]
        [--sweep tune_spaces/quickstart_sweep.yaml] [--num-seeds 3] [--quick] [--no-sweep]

``--quick``: 1 epoch, 1-step training attack, 2-step evaluation attack, 2 seeds, a 2-configuration
sweep with 1 seed (what the CI test runs; the numbers then say little).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMINGS_TAG = "[distfair timings] "
QUICK_OVERRIDES = ["train.epochs=1", "attack.steps=1", "eval.attacks=[{name: pgd2, attack: pgd, steps: 2}]"]


# ------------------------------------------------------------------------------ the plain loop
def plain_loop(cfgs: list[dict], workdir: Path, threads: int) -> tuple[float, list[dict]]:
    """Wall seconds of training every ``(cfg, seed)`` one after another; per seed run its
    ``robust_acc`` and the engine's own timings."""
    import torch

    from distfair.engine import run_seed

    # a Ray worker with n CPUs runs torch with n threads (Ray sets OMP_NUM_THREADS); another
    # thread count changes the order of float reductions, and with it the metrics
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out = []
    for i, cfg in enumerate(cfgs):
        for seed in cfg["seeds"]:
            t0 = time.perf_counter()
            result = run_seed(cfg, seed, workdir=workdir / f"c{i}-seed{seed}")
            out.append({"config": i, "seed": seed, "robust_acc": result.metrics.get("robust_acc"),
                        "wall_s": time.perf_counter() - t0, "result": result, **result.timings})
    return time.perf_counter() - started, out


def seed_figure_seconds(runs: list[dict], workdir: Path) -> float:
    """Mean seconds to draw one seed run's figures (what ``SeedRunLogger.log_result`` draws),
    measured on the plain loop's results after one warm-up drawing (matplotlib's import)."""
    from distfair.evaluation.seed_figures import seed_figures

    (workdir / "warm").mkdir()
    seed_figures(runs[0]["result"].to_dict(), "warm-up", workdir / "warm")
    times = []
    for i, run in enumerate(runs):
        out = workdir / f"fig{i}"
        out.mkdir()
        t0 = time.perf_counter()
        seed_figures(run["result"].to_dict(), f"seed {run['seed']}", out)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


# ------------------------------------------------------------------------------ the commands
def command(args: list[str], workdir: Path) -> tuple[float, float, list[tuple[float, str]]]:
    """(wall-clock start, wall seconds, stdout lines with the wall-clock time each arrived)."""
    cmd = [sys.executable, "-m", "distfair.cli", *args, "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--storage-path", str(workdir / "runs")]
    started = time.time()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir,
                          env={**os.environ, "NO_COLOR": "1"}) as proc:
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip()))
        err = proc.stderr.read()
    if proc.returncode not in (0,):
        sys.exit(f"distfair {args[0]} failed ({proc.returncode}):\n" + "\n".join(t for _, t in lines[-30:]) + err)
    return started, time.time() - started, lines


def logged_timings(workdir: Path) -> list[dict]:
    """Every ``[distfair timings]`` record in the command's log file(s)."""
    found = []
    for log in sorted((workdir / "runs" / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if TIMINGS_TAG in line:
                found.append(json.loads(line.split(TIMINGS_TAG, 1)[1]))
    return found


def seed_parts(records: list[dict]) -> list[dict]:
    """Per seed run, where its wall time in the worker went (seconds)."""
    out = []
    for rec in records:
        for seed, c in rec["seeds"].items():
            first_epoch_start = c["first_epoch_done_at"] - c["first_epoch_s"]
            parts = {
                "set-up (data, model, defense)": first_epoch_start - c["seed_started_at"] - c["mlflow_open_s"],
                "training": c["train_time_s"],
                "evaluation (validation, test)": c["val_time_s"] + c["eval_time_s"],
                "MLflow writes (open, epochs, final record)": (c["mlflow_open_s"] + c["mlflow_epoch_s"]
                                                               + c["seed_logged_at"] - c["seed_computed_at"]),
                "Ray Train checkpoint reports": c["report_s"],
            }
            wall = c["seed_logged_at"] - c["seed_started_at"]
            parts["other (checkpoint saves, finish)"] = wall - sum(parts.values())
            out.append({"seed": int(seed), "wall": wall, "parts": parts})
    return out


def group_parts(records: list[dict]) -> dict[str, list[float]]:
    starts, ends = [], []
    for rec in records:
        clocks = rec["seeds"]
        for group in rec["groups"]:
            mine = [clocks[str(s)] for s in group["seeds"] if str(s) in clocks]
            if not mine or "fit_started_at" not in group:
                continue
            starts.append(min(c["worker_started_at"] for c in mine) - group["fit_started_at"])
            if "fit_ended_at" in group:        # a slot still up for the command's next items has none yet
                ends.append(group["fit_ended_at"] - max(c["seed_logged_at"] for c in mine))
    return {"worker group start-up": starts, "worker group teardown": ends}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def print_parts(title: str, parts: dict[str, float]) -> None:
    print(title)
    width = max(len(k) for k in parts)
    for name, value in parts.items():
        print(f"  {name:<{width}}  {value:7.2f} s")


# ------------------------------------------------------------------------------ distfair run
def bench_run(args, config: str, seeds: list[int], overrides: list[str], tmp: Path) -> None:
    from distfair.config import load_config

    (tmp / "plain").mkdir()
    (tmp / "run").mkdir()
    cfg = load_config(config, [*overrides, f"seeds={seeds}"])
    plain_s, plain = plain_loop([cfg], tmp / "plain", args.threads)
    figures_s = seed_figure_seconds(plain, tmp / "plain")
    sets = [a for o in overrides for a in ("--set", o)]
    started, run_s, lines = command(["run", config, "--seeds", ",".join(map(str, seeds)), *sets], tmp / "run")
    records = logged_timings(tmp / "run")

    def first(pred) -> float | None:
        return next((t - started for t, text in lines if pred(text)), None)

    compute = sum(p["train_time_s"] + p["val_time_s"] + p["eval_time_s"] for p in plain)
    print(f"== distfair run {args.config} ({'quick, ' if args.quick else ''}seeds {seeds}) ==")
    print(f"plain loop (one process, seeds in sequence, {args.threads} torch thread(s)): {plain_s:7.1f} s "
          f"(of which training and evaluation {compute:.1f} s)")
    print(f"distfair run (end to end):                   {run_s:7.1f} s   ratio {run_s / plain_s:.2f}x")
    t_first = first(lambda s: "Ray, Tune and worker output" in s)
    t_ray = first(lambda s: "] Ray: " in s)
    t_plan = first(lambda s: "worker group(s) of" in s)
    t_epoch = first(lambda s: ": epoch 1/" in s)
    t_table = first(lambda s: "seeds finished. Mean" in s)
    # the slots stay up until the command closes them: the last seed logged ends their work
    fit_end = max((g.get("fit_ended_at") or max(r["seeds"][str(s)]["seed_logged_at"] for s in g["seeds"])
                   for r in records for g in r["groups"] if g["seeds"]), default=None)
    fit_start = min((g["fit_started_at"] for r in records for g in r["groups"] if "fit_started_at" in g),
                    default=None)
    if None in (t_first, t_ray, t_plan, t_table, fit_end) or not records:
        print("PARTS: not found (the command's output or its log file changed)")
        return
    seeds_split = seed_parts(records)
    groups = group_parts(records)
    driver = {
        "imports, configuration": t_first,
        "Ray start-up (ray.init)": t_ray - t_first,
        # the command's worker groups (slots) start before its MLflow runs are made: the set-up
        # runs side by side with their start-up, so it is shown but is not one of the parts in sequence
        "until the fit() calls start": fit_start - started - t_ray,
        "MLflow set-up in the driver (experiment, runs; side by side with the start-up below)": t_plan - t_ray,
        "worker group start-up (fit() to the first worker line, mean)": mean(groups["worker group start-up"]),
        "seeds, in worker groups side by side (wall)": fit_end - fit_start - mean(groups["worker group start-up"]),
        "driver summary: MLflow reads, record, seed-stability figure": t_table - (fit_end - started),
        "shutdown (report lines, ray.shutdown, exit)": run_s - t_table,
    }
    print_parts(f"PARTS of distfair run (wall, {run_s:.1f} s in all; first epoch line at {t_epoch or 0:.1f} s):",
                driver)
    per_seed = {k: mean(s["parts"][k] for s in seeds_split) for k in seeds_split[0]["parts"]}
    teardown = mean(groups["worker group teardown"]) if groups["worker group teardown"] else 0.0
    per_seed["worker group teardown (per group)"] = teardown
    print_parts(f"PARTS per seed run in its worker (mean of {len(seeds_split)}; wall "
                f"{mean(s['wall'] for s in seeds_split):.2f} s):", per_seed)
    print(f"  of the MLflow writes, drawing the seed's figures:  {figures_s:7.2f} s (measured in this process)")
    n = len(seeds_split)
    n_groups = sum(len(r["groups"]) for r in records)
    fixed_warm = (per_seed["set-up (data, model, defense)"] + per_seed["MLflow writes (open, epochs, final record)"]
                  + per_seed["Ray Train checkpoint reports"] + per_seed["other (checkpoint saves, finish)"]
                  + (mean(groups["worker group start-up"]) + teardown) * n_groups / n
                  + (driver["MLflow set-up in the driver (experiment, runs; side by side with the start-up below)"]
                     + driver["driver summary: MLflow reads, record, seed-stability figure"]) / n)
    print(f"FIXED COST per seed run on a warm instance (beyond training and evaluation; group start-up, teardown "
          f"and the driver's work shared over its seeds): {fixed_warm:.2f} s")
    values = [p["robust_acc"] for p in plain]
    print("plain loop robust_acc per seed: " + ", ".join(f"{p['seed']}: {p['robust_acc']:.4f}" for p in plain)
          + f" (mean {mean(values):.4f})")
    summary = [text for _, text in lines if text.startswith("robust_acc ")]
    print("distfair run robust_acc (mean ± std over seeds): " + (summary[0] if summary else "not found"))


# ------------------------------------------------------------------------------ distfair sweep
def bench_sweep(args, sweep: str, overrides: list[str], tmp: Path) -> None:
    from distfair.config import apply_overrides, validate
    from distfair.experiment.sweep import load_sweep

    (tmp / "sweep").mkdir()
    (tmp / "plain-sweep").mkdir()
    extra = ["--num-samples", "2", "--num-seeds", "1"] if args.quick else []
    sets = [a for o in overrides for a in ("--set", o)]
    started, sweep_s, lines = command(["sweep", sweep, "--json", *extra, *sets], tmp / "sweep")
    result = json.loads(next(text for _, text in reversed(lines) if text.startswith("{")))
    base, spec = load_sweep(sweep, overrides=overrides, **({"num_samples": 2, "num_seeds": 1} if args.quick else {}))
    seeds = list(base["seeds"])
    cfgs = []
    for trial in result["trials"]:
        cfg = validate(apply_overrides(spec.base, list(trial["params"].items())), f"{sweep} {trial['params']}")
        cfg["seeds"] = seeds
        cfgs.append(cfg)
    plain_s, plain = plain_loop(cfgs, tmp / "plain-sweep", args.threads)
    compute = sum(p["train_time_s"] + p["val_time_s"] + p["eval_time_s"] for p in plain)
    records = logged_timings(tmp / "sweep")
    seeds_split = seed_parts(records)
    n_runs = len(cfgs) * len(seeds)
    print(f"== distfair sweep {args.sweep} ({len(cfgs)} configurations x {len(seeds)} seed(s), "
          f"{'quick' if args.quick else 'as shipped'}) ==")
    print(f"plain loop (one process, the same configurations and seeds in sequence): {plain_s:7.1f} s "
          f"(training and evaluation {compute:.1f} s)")
    print(f"distfair sweep (end to end):                 {sweep_s:7.1f} s   ratio {sweep_s / plain_s:.2f}x")
    if seeds_split:
        worker_compute = sum(s["parts"]["training"] + s["parts"]["evaluation (validation, test)"]
                             for s in seeds_split)
        slots = args.slots
        overhead = (sweep_s * slots - worker_compute) / max(len(seeds_split), 1)
        print(f"  seed runs with worker timings: {len(seeds_split)} of {n_runs}; their training and evaluation in "
              f"the workers: {worker_compute:.1f} s")
        print(f"  SWEEP OVERHEAD per seed run ({slots} slot(s) x wall - compute, over the seed runs): {overhead:.2f} s "
              f"slot-seconds; estimated ratio at 30 s of compute per seed run: {(30 + overhead) / 30:.2f}x "
              f"(goal <= 1.25x)")
        print_parts("PARTS per seed run in its worker (mean):",
                    {k: mean(s["parts"][k] for s in seeds_split) for k in seeds_split[0]["parts"]})
        groups = {k: v for k, v in group_parts(records).items() if v}
        if groups:      # a sweep's trials do not see the slots' fit() spans (the command's driver does)
            print_parts("PARTS per worker group (mean):", {k: mean(v) for k, v in groups.items()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tune_spaces/quickstart.yaml")
    p.add_argument("--sweep", default="tune_spaces/quickstart_sweep.yaml")
    p.add_argument("--num-seeds", type=int, default=None, help="seeds of the run (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the plain loop (default 1: what a 1-CPU Ray worker uses, so that the "
                        "metrics match)")
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1,
                   help="seed runs the sweep can run at once (default: the CPU count, 1 CPU per seed run)")
    p.add_argument("--quick", action="store_true", help="tiny epochs and attacks, fewer seeds and configurations")
    p.add_argument("--no-run", action="store_true", help="only the sweep")
    p.add_argument("--no-sweep", action="store_true", help="only the run")
    args = p.parse_args()
    overrides = QUICK_OVERRIDES if args.quick else []
    seeds = list(range(args.num_seeds or (2 if args.quick else 3)))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="distfair-bench-") as tmp:
        tmp = Path(tmp)
        if not args.no_run:
            bench_run(args, str(Path(args.config).resolve()), seeds, overrides, tmp)
        if not args.no_sweep:
            bench_sweep(args, str(Path(args.sweep).resolve()), overrides, tmp)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
