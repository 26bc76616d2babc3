"""Shared fixtures: tiny configurations and one local Ray instance for the Ray tests."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

# The unit tests run thousands of tiny forward passes, where intra-op threads only add
# fork/join overhead (and, on a busy machine, waits for descheduled threads). Ray workers
# and spawned processes are separate processes and keep their own settings.
torch.set_num_threads(1)

#: pytest's exit status, kept for :func:`pytest_unconfigure`
_EXIT_STATUS = pytest.StashKey[int]()

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


def ensure_ray():
    """The session's one local Ray instance (2 logical CPUs, the sweeps' trial resource, the
    dashboard that Train's placement-group cleaner polls), started at first use and again if a
    test shut it down (``tests/test_local_instance.py`` needs none running), shared by every
    test that runs the command in this process (:func:`call_cli`) or uses Ray directly: the
    commands find it initialised and reuse it instead of starting their own
    (``distfair.distributed.session``). Its workers also register the toy defenses of
    ``tests/toy_defenses.py``. Tests that run the command in a process of its own (a killed
    driver, Ctrl-C, what a user's terminal shows) still start their own instance: a plain
    ``ray.init()`` never joins another local instance, only one made by ``ray start``."""
    import ray

    if ray.is_initialized():
        return ray
    from distfair.distributed import session
    from distfair.distributed.sweep import TRIAL_RESOURCE

    tests_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    for name, value in session.LOCAL_INSTANCE_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=True, resources={TRIAL_RESOURCE: 1000},
             runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": "toy_defenses.register"})
    return ray


@pytest.fixture(scope="session")
def ray_session_instance():
    """The session's instance (:func:`ensure_ray`); it is ended after pytest's last output, by
    :func:`pytest_unconfigure`."""
    yield


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the session's local Ray instance without ``ray.shutdown()`` in this process: in three
    fresh-clone runs (2026-12-07/08) the test process died of SIGSEGV there or at exit after
    every test had passed (docs/development/testing.md). Every line pytest writes is out by now;
    the instance's processes (GCS, raylet, dashboard, workers) are this process's descendants,
    so they are terminated (then killed), and the process leaves with pytest's exit status
    without running Ray's exit handlers."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    import psutil

    sys.stdout.flush()
    sys.stderr.flush()
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(config.stash.get(_EXIT_STATUS, 0))


@pytest.fixture
def ray_instance(ray_session_instance):
    """The session's local Ray instance, running (:func:`ensure_ray`)."""
    return ensure_ray()


@pytest.fixture
def ray_local(ray_instance):
    """The session's local Ray instance (:func:`ensure_ray`)."""
    return ray_instance


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


#: a line Ray's log monitor forwards to the driver of the shared instance at any moment: from
#: a raylet (``(raylet) ... is over 95% full``) or a worker (``(RayTrainWorker pid=12) ...``);
#: a command started on its own writes them to its log file, never to the terminal
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|autoscaler|[\w.]+ pid=\d+[^)]*|pid=\d+[^)]*)\)")


def _without_ray_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not RAY_FORWARDED.match(line))


def call_cli(*argv, cwd: str | Path | None = None) -> CliResult:
    """The command called in this process (``distfair.cli.main``) from ``cwd``: its exit code and
    what it wrote to stdout and stderr, as ``subprocess.run`` would give them (``--json``
    writes its object to file descriptor 1 itself, so that is captured too). Ray: the
    session's instance (:func:`ensure_ray`), which the command reuses; the lines its log monitor
    forwards to this process (:data:`RAY_FORWARDED`) are left out."""
    import io
    import sys
    import tempfile

    from distfair import cli

    ensure_ray()
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    with tempfile.TemporaryFile() as fd1:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(fd1.fileno(), 1)
        try:
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([str(a) for a in argv])
        finally:
            os.chdir(before)
            os.dup2(saved, 1)
            os.close(saved)
        fd1.seek(0)
        written = fd1.read().decode(errors="replace")
    return CliResult(code, _without_ray_lines(written + out.getvalue()), _without_ray_lines(err.getvalue()))


@pytest.fixture
def distfair_cli(ray_session_instance):
    """:func:`call_cli` on the session's Ray instance."""
    return call_cli
