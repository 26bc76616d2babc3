"""Measure how the seeds of one configuration are best laid out over Ray Train worker groups.

Runs the same configuration (default: tune_spaces/quickstart.yaml) in one Ray session with
  * auto      -- distfair's layout: as many concurrent groups as fit, seeds back to back in each
  * serial    -- one worker group, all seeds in sequence (max_concurrent_seeds: 1)
and prints wall times and their ratio. Timings are printed, never asserted.

    python scripts/bench_seed_layout.py [--config FILE] [--num-seeds 3] [--repeats 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from distfair import tracking
from distfair.config import load_config
from distfair.distributed import plan_seed_groups, ray_session
from distfair.experiment.run import run_configuration_with_tracking


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tune_spaces/quickstart.yaml")
    p.add_argument("--num-seeds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--address", default=None)
    args = p.parse_args()
    layouts = {"auto": [], "serial": ["scaling.max_concurrent_seeds=1"]}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory() as tmp, ray_session(args.address) as resources:
        uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp}/bench.db")
        print(f"cluster: {resources.get('CPU')} CPU, {resources.get('GPU', 0)} GPU; config {args.config}; "
              f"{args.num_seeds} seeds; {args.repeats} repeat(s)")
        for _ in range(args.repeats):
            for name, overrides in layouts.items():
                cfg = load_config(args.config, overrides + [f"seeds={args.num_seeds}"])
                groups = plan_seed_groups(cfg["seeds"], cfg["scaling"], resources)
                start = time.perf_counter()
                report = run_configuration_with_tracking(cfg, config_path=args.config, experiment="bench",
                                                         tracking_uri=uri, storage_path=f"{tmp}/storage",
                                                         log=lambda msg: None)
                elapsed = time.perf_counter() - start
                if report.errors:
                    print(f"{name}: failed seeds {report.errors}", file=sys.stderr)
                    return 1
                times[name].append(elapsed)
                print(f"  {name:<7} groups {groups}: {elapsed:6.1f} s", flush=True)
    auto, serial = statistics.median(times["auto"]), statistics.median(times["serial"])
    print(f"median wall time: auto {auto:.1f} s, serial {serial:.1f} s; serial/auto = {serial / auto:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
