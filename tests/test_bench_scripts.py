"""The benchmark scripts run as a user runs them, at a tiny size: they print what they promise
(the overhead ratio and its parts; the sweep under load is exactly once and
leaves nothing RUNNING). Their timings are printed, never asserted. Marked ``bench``: not in the
default run (``./dev test``, CI), run with ``./dev test -m bench`` before numbers from these
scripts are published (docs/development/testing.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.bench]
ROOT = Path(__file__).resolve().parent.parent


def _script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_bench_overhead_quick_prints_ratios_and_parts(seed_figures):
    done = _script("bench_overhead.py", "--quick")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # the run and the sweep against their plain loops, each with a ratio
    assert re.search(r"distfair run \(end to end\):\s+[\d.]+ s\s+ratio [\d.]+x", out), out
    assert re.search(r"distfair sweep \(end to end\):\s+[\d.]+ s\s+ratio [\d.]+x", out), out
    assert re.search(r"SWEEP OVERHEAD per seed run .*: -?[\d.]+ s", out), out
    # the fixed cost split into its parts, each a number of seconds read from real timestamps
    for part in ("Ray start-up (ray.init)", "MLflow set-up in the driver", "worker group start-up",
                 "set-up (data, model, defense)", "training", "evaluation (validation, test)",
                 "MLflow writes (open, epochs, final record)", "drawing the seed's figures",
                 "driver summary: MLflow reads, record, seed-stability figure", "shutdown"):
        assert re.search(re.escape(part) + r".*\s-?[\d.]+ s", out), (part, out)
    assert "PARTS: not found" not in out, out
    assert re.search(r"FIXED COST per seed run on a warm instance .*: [\d.]+ s", out), out
    # the same seeds give the same numbers both ways (CPU, one torch thread per worker)
    plain = re.search(r"plain loop robust_acc per seed: .*\(mean ([\d.]+)\)", out).group(1)
    assert re.search(rf"distfair run robust_acc .*robust_acc(?: \(\S+\))?\s+{plain} ±", out), out


def test_bench_sweep_load_small_is_exactly_once_and_leaves_nothing_running():
    done = _script("bench_sweep_load.py", "--configs", "4", "--seeds", "2", "--max-concurrent", "8")
    out = done.stdout
    assert "EXACTLY ONCE: ok (4 configurations, 2 FINISHED seed run(s) each)" in out, out + done.stderr
    assert "NO RUN LEFT RUNNING: ok" in out, out
    assert "PROBLEM:" not in out, out
    assert re.search(r"DRIVER RSS: start \d+ MiB, .* end \d+ MiB", out), out
    assert done.returncode == 0, out + done.stderr
