"""How long a 1-worker Ray Train group takes from ``fit()`` to its train function: with the
torch backend (``TorchTrainer``, what distfair starts for several workers or GPUs) and without
it (``DataParallelTrainer``, what distfair starts for a single CPU worker, which needs no
process group), measured in turn on one local Ray instance so that both see the same machine
(``distfair.distributed.runner._abortable_trainer``).

The train function imports what a slot's worker imports (``distfair.distributed.worker``,
torch with it) and returns; the numbers are the group's start-up (to the function) and its
wind-down (function to ``fit()`` returning).

    python scripts/bench_group_start.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _train(config: dict) -> None:
    import time

    import distfair.distributed.worker as slot_worker   # what a slot's worker imports

    assert slot_worker.slot_loop_per_worker

    Path(config["stamp"]).write_text(str(time.time()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="groups started per kind (alternating)")
    args = p.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig

    from distfair.distributed import session  # noqa: F401 - Ray Train's environment defaults
    from distfair.distributed.runner import _abortable_trainer

    for name, value in session.LOCAL_INSTANCE_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=2, logging_level="ERROR", include_dashboard=True, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="bench-group-start-"))
    kinds = {"TorchTrainer (several workers, GPUs)": _abortable_trainer(None, torch_backend=True),
             "DataParallelTrainer (a single CPU worker)": _abortable_trainer(None, torch_backend=False)}
    start: dict[str, list[float]] = {k: [] for k in kinds}
    wind_down: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k, (label, trainer_class) in enumerate(kinds.items()):
            stamp = root / f"stamp-{r}-{k}"
            trainer = trainer_class(
                _train, train_loop_config={"stamp": str(stamp)},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(name=f"g{r}-{k}", storage_path=str(root)))
            began = time.time()
            trainer.fit()
            ended = time.time()
            reached = float(stamp.read_text())
            start[label].append(reached - began)
            wind_down[label].append(ended - reached)
            print(f"round {r + 1}: {label}: fit() to train function {reached - began:.1f} s, "
                  f"then to fit() returning {ended - reached:.1f} s", flush=True)
    ray.shutdown()
    print("== median over rounds ==")
    for label in kinds:
        print(f"{label}: start-up {statistics.median(start[label]):.1f} s, "
              f"wind-down {statistics.median(wind_down[label]):.1f} s")
    with_torch, without = (statistics.median(start[label]) for label in kinds)
    print(f"START-UP RATIO without / with the torch backend: {without / with_torch:.2f}x")


if __name__ == "__main__":
    main()
