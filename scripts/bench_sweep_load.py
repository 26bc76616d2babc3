"""A sweep under load (issue 15, "Under load"): many tiny configurations x seeds on the local
instance with ``--max-concurrent`` above what fits, run as a user runs it (``distfair sweep``,
a fresh SQLite MLflow store and storage path in a scratch directory).

Checked from the MLflow record afterwards (exit code 1 when a check fails):
  * exactly once: one configuration run per Tune trial and per sampled parameter set, as many
    as configurations were asked for, each with exactly one FINISHED seed run per seed;
  * no run of the experiment is left RUNNING (or SCHEDULED).
Measured and printed, never judged: the driver process's resident memory (psutil, sampled every
second in a thread) at the start, after 10 configurations and at the end, and its slope (least
squares over the samples from the 10th configuration on).

    python scripts/bench_sweep_load.py [--configs 50] [--seeds 3] [--max-concurrent 8]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

TINY_SWEEP = {
    "description": "load test: tiny synthetic configurations",
    "defense": {"name": "syfar", "lambda_sym": 0.5},
    "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 6},
    "model": {"name": "mlp", "hidden": 16},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "attack": {"name": "pgd", "eps": 0.1, "steps": 1},
    "eval": {"attacks": [{"name": "pgd2", "attack": "pgd", "steps": 2}]},
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "seeds": [0],
    "space": {"params": {"defense.lambda_sym": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
                         "train.lr": {"type": "float", "low": 0.005, "high": 0.1, "log": True}},
              "objective": {"metric": "val_worst_class_acc", "stat": "mean", "mode": "max"},
              "search": {"sampler": "random", "seed": 0, "num_samples": 1}},
}
DONE = re.compile(r"configurations (\d+)/(\d+) done")


def _psutil():
    """psutil (the ``dev`` extra)."""
    import psutil

    return psutil


class RssSampler(threading.Thread):
    """The resident set size of one process (MiB), once a second, with the time of each sample."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.psutil = _psutil()
        self.process = self.psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.time(), self.process.memory_info().rss / 2**20))
            except self.psutil.Error:
                return
            self.stop.wait(1.0)

    def at(self, when: float) -> float | None:
        before = [rss for t, rss in self.samples if t <= when]
        return before[-1] if before else None


def check_record(uri: str, experiment: str, configs: int, seeds: int) -> list[str]:
    """What is wrong with the sweep's MLflow record (empty: every check passed)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [f"no MLflow experiment {experiment!r}"]
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    problems = []
    stuck = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    if stuck:
        problems.append(f"{len(stuck)} run(s) left RUNNING/SCHEDULED: "
                        + ", ".join(f"{r.info.run_id} ({r.data.tags.get('distfair.role')})" for r in stuck[:10]))
    configurations = [r for r in runs if r.data.tags.get("distfair.role") == "configuration"]
    per_trial = collections.Counter(r.data.tags.get("distfair.trial_id") for r in configurations)
    per_params = collections.Counter(r.data.tags.get("distfair.trial_params") for r in configurations)
    if len(per_trial) != configs:
        problems.append(f"{len(per_trial)} distinct trials have a configuration run, {configs} were asked for")
    problems += [f"trial {t}: {n} configuration runs" for t, n in per_trial.items() if n != 1]
    problems += [f"parameters {p}: {n} configuration runs" for p, n in per_params.items() if n != 1]
    seed_runs = collections.defaultdict(list)
    for r in runs:
        if r.data.tags.get("distfair.role") == "seed":
            seed_runs[r.data.tags.get("mlflow.parentRunId")].append(r)
    for conf in configurations:
        mine = seed_runs.get(conf.info.run_id, [])
        finished = collections.Counter(r.data.tags.get("distfair.seed") for r in mine if r.info.status == "FINISHED")
        if conf.info.status != "FINISHED" or len(finished) != seeds or any(n != 1 for n in finished.values()) \
                or len(mine) != seeds:
            problems.append(f"configuration run {conf.info.run_id} ({conf.data.tags.get('distfair.trial_id')}): "
                            f"{conf.info.status}, {len(mine)} seed run(s), FINISHED per seed {dict(finished)}")
    return problems


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=int, default=50, help="configurations (sampled points), default 50")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration, default 3")
    p.add_argument("--max-concurrent", type=int, default=8,
                   help="--max-concurrent of the sweep (default 8: above what 2 CPUs hold)")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a scratch directory)")
    args = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="distfair-load-") as scratch:
        work = Path(args.keep or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        sweep = work / "load_sweep.yaml"
        sweep.write_text(yaml.safe_dump(TINY_SWEEP))
        uri = f"sqlite:///{work / 'mlflow.db'}"
        cmd = [sys.executable, "-m", "distfair.cli", "sweep", str(sweep), "--num-samples", str(args.configs),
               "--num-seeds", str(args.seeds), "--max-concurrent", str(args.max_concurrent), "--experiment", "load",
               "--tracking-uri", uri, "--storage-path", str(work / "runs")]
        started = time.time()
        done_at: dict[int, float] = {}
        tail: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work,
                              env={**os.environ, "NO_COLOR": "1"}) as proc:
            sampler = RssSampler(proc.pid)
            sampler.start()
            try:
                for line in proc.stdout:
                    tail = (tail + [line.rstrip()])[-40:]
                    found = DONE.search(line)
                    if found:
                        done_at.setdefault(int(found.group(1)), time.time())
            except BaseException:
                # stopped (Ctrl-C, or SIGTERM from a timeout): the sweep gets Ctrl-C too, so it
                # marks its runs KILLED and shuts its Ray instance down instead of being orphaned
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
                raise
        sampler.stop.set()
        sampler.join()
        wall = time.time() - started
        print(f"distfair sweep: {args.configs} configurations x {args.seeds} seeds, --max-concurrent "
              f"{args.max_concurrent}: exit code {proc.returncode}, {wall:.1f} s", flush=True)
        if proc.returncode != 0:
            print("\n".join(tail))
        samples = sampler.samples
        if samples:
            import numpy as np

            first = samples[0][1]
            tenth = sampler.at(done_at[10]) if 10 in done_at else None
            last = samples[-1][1]
            since = done_at.get(10, samples[0][0])
            tail_samples = [(t, r) for t, r in samples if t >= since]
            slope = (np.polyfit([t - since for t, _ in tail_samples], [r for _, r in tail_samples], 1)[0] * 60
                     if len(tail_samples) >= 3 else float("nan"))
            rate = (len(done_at) - 10) / ((max(done_at.values()) - since) / 60) if len(done_at) > 10 else None
            print(f"DRIVER RSS: start {first:.0f} MiB, after 10 configurations "
                  + (f"{tenth:.0f} MiB" if tenth is not None else "n/a") + f", end {last:.0f} MiB, peak "
                  f"{max(r for _, r in samples):.0f} MiB; slope from the 10th configuration on {slope:+.2f} MiB/min"
                  + (f" ({slope / rate:+.3f} MiB per configuration)" if rate else "")
                  + f" ({len(samples)} samples)")
        problems = check_record(uri, "load", args.configs, args.seeds)
        exactly_once = not any("configuration run" in x or "distinct trials" in x for x in problems)
        no_running = not any("RUNNING" in x for x in problems)
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"EXACTLY ONCE: {'ok' if exactly_once else 'FAILED'} ({args.configs} configurations, "
              f"{args.seeds} FINISHED seed run(s) each)")
        print(f"NO RUN LEFT RUNNING: {'ok' if no_running else 'FAILED'}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0 if proc.returncode == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
