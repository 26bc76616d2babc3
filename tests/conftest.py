"""Shared fixtures: tiny configurations and one local Ray instance for the Ray tests."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

# The unit tests run thousands of tiny forward passes, where intra-op threads only add
# fork/join overhead (and, on a busy machine, waits for descheduled threads). Ray workers
# and spawned processes are separate processes and keep their own settings.
torch.set_num_threads(1)

# Per-seed figures (about 2 s of drawing per seed run) only where a test looks at them: those
# tests take the `seed_figures` fixture. Set before any Ray instance starts, so workers and the
# commands' subprocesses inherit it.
os.environ.setdefault("DISTFAIR_SEED_FIGURES", "0")


@pytest.fixture
def seed_figures(monkeypatch):
    """Seed runs draw their figures (plots/) in this test, its subprocesses included."""
    monkeypatch.setenv("DISTFAIR_SEED_FIGURES", "1")
    return monkeypatch

def stop_process_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the process group of ``proc`` (started with ``start_new_session=True``, so the
    group is exactly what it started; ``ray stop`` would end every Ray instance on the
    machine), then SIGKILL to whatever of that group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


TINY = {
    "defense": {"name": "syfar", "lambda_sym": 0.5},
    "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 6},
    "model": {"name": "mlp", "hidden": 16},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
    "eval": {"attacks": [{"name": "pgd5", "attack": "pgd", "steps": 5}, {"name": "fgsm", "attack": "fgsm"}]},
    # one worker group per command: a tiny seed trains in about a second, and a second group
    # costs some 8 s of start-up on a 2-core machine; the shipped quickstart (tests/test_ray_run.py),
    # the benchmarks and the multi-node tests run several side by side
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}, "max_concurrent_seeds": 1},
    "seeds": [0, 1],
}



def tiny_spoken_words(root: str | Path) -> dict:
    """A ``spoken_words`` dataset block small enough for a Ray end-to-end test: 3 words x 12
    synthetic voices (2 accents x 2 variants x 3 speeds), half-second clips, 4 voices per split."""
    return {"name": "spoken_words", "root": str(root), "words": ["one", "two", "three"], "accents": ["en", "en-us"],
            "variants": ["m3", "f3"], "speeds": [140, 180, 220], "length": 8000, "test_fraction": 0.34,
            "val_fraction": 0.33}


@pytest.fixture
def tiny_cfg_dict() -> dict:
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def write_config(tmp_path):
    def write(data: dict, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path
    return write


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One real local Ray instance (2 logical CPUs) shared by the tests of a module
    (module scope: a second local instance started by a subprocess test must not find two)."""
    import ray

    from distfair.distributed import session  # noqa: F401 - sets Ray Train env defaults

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=True)
    yield ray
    ray.shutdown()
