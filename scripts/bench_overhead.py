"""Orchestration overhead of ``distfair run`` against a plain PyTorch loop (issue 16, first part).

Runs the same configuration and seeds two ways in one invocation:
  * plain     -- one process, no Ray, no MLflow: ``distfair.engine.run_seed`` for each seed, one
                 after another (the math alone: training, validation and test evaluation)
  * distfair  -- ``distfair run CONFIG`` as a user runs it (embedded default: a local Ray instance,
                 a fresh SQLite MLflow store and storage path in a scratch directory)
and prints the wall times, their ratio, and where ``distfair run``'s time goes: until its first
progress line (Ray and worker start-up), until the first epoch line, the training span, and from
the last seed line to the exit (MLflow writes, plots, shutdown). Timings are printed, never
asserted; metrics of the two ways are printed side by side (the same seed gives the same
numbers on CPU).

    python scripts/bench_overhead.py [--config tune_spaces/quickstart.yaml] [--num-seeds 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plain_loop(config: str, seeds: list[int], workdir: Path, threads: int) -> tuple[float, dict[int, float]]:
    import torch

    from distfair.config import load_config
    from distfair.engine import run_seed

    # a Ray worker with n CPUs runs torch with n threads (Ray sets OMP_NUM_THREADS); another
    # thread count changes the order of float reductions, and with it the metrics
    torch.set_num_threads(threads)
    cfg = load_config(config, [f"seeds={seeds}"])
    started = time.perf_counter()
    robust = {}
    for seed in seeds:
        result = run_seed(cfg, seed, workdir=workdir / f"seed{seed}")
        robust[seed] = result.metrics.get("robust_acc")
    return time.perf_counter() - started, robust


def distfair_run(config: str, seeds: list[int], workdir: Path) -> tuple[float, list[tuple[float, str]]]:
    """Wall time of the command and its stdout lines with the time each arrived."""
    cmd = [sys.executable, "-m", "distfair.cli", "run", config, "--seeds", ",".join(map(str, seeds)),
           "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--storage-path", str(workdir / "runs")]
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                          env={**os.environ, "NO_COLOR": "1"}) as proc:
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))
    if proc.returncode != 0:
        sys.exit("distfair run failed:\n" + "\n".join(text for _, text in lines[-30:]))
    return time.perf_counter() - started, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tune_spaces/quickstart.yaml")
    p.add_argument("--num-seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the plain loop (default 1: what a 1-CPU Ray worker uses, so that the "
                        "metrics match)")
    args = p.parse_args()
    config = str(Path(args.config).resolve())
    seeds = list(range(args.num_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "plain").mkdir()
        (tmp / "run").mkdir()
        plain_s, plain_robust = plain_loop(config, seeds, tmp / "plain", args.threads)
        run_s, lines = distfair_run(config, seeds, tmp / "run")

    def first(pred) -> float | None:
        return next((t for t, text in lines if pred(text)), None)

    first_line = lines[0][0] if lines else None
    first_epoch = first(lambda s: ": epoch 1/" in s)
    last_seed_line = max((t for t, text in lines if "] seed " in text), default=None)
    print(f"config {args.config}, seeds {seeds}; torch threads in the plain loop: {args.threads}; "
          f"{os.cpu_count()} cores")
    print(f"plain loop (one process, seeds in sequence): {plain_s:7.1f} s")
    print(f"distfair run (end to end):                   {run_s:7.1f} s   ratio {run_s / plain_s:.2f}x")
    if first_epoch is not None and last_seed_line is not None:
        print(f"  until its first output line:               {first_line:7.1f} s  (imports, config)")
        print(f"  until the first epoch line:                {first_epoch:7.1f} s  (Ray, MLflow, worker start-up, "
              f"data, one epoch)")
        print(f"  first epoch line to last seed line:        {last_seed_line - first_epoch:7.1f} s  (training and "
              f"evaluation, seeds side by side)")
        print(f"  last seed line to exit:                    {run_s - last_seed_line:7.1f} s  (MLflow summary, "
              f"plots, shutdown)")
    values = list(plain_robust.values())
    print("plain loop robust_acc per seed: " + ", ".join(f"{s}: {v:.4f}" for s, v in plain_robust.items())
          + f" (mean {sum(values) / len(values):.4f}, min {min(values):.4f}, max {max(values):.4f})")
    summary = [text for _, text in lines if text.startswith("robust_acc ")]
    print("distfair run robust_acc (mean ± std over seeds): " + (summary[0] if summary else "not found"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
