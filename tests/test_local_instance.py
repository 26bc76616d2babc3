"""The environment a command's own local Ray instance starts with (issue 16, orchestration
overhead): Train V2's preemption watcher off unless the user set it, inherited by every process
of the instance, and the driver's environment restored afterwards. The measured effect is in
README "How it runs on Ray" (``scripts/bench_overhead.py``)."""
from __future__ import annotations

import os

import pytest
import ray

from distfair.distributed import session

pytestmark = pytest.mark.ray

WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def test_the_preemption_watcher_switch_is_one_ray_train_reads():
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR, ENV_VARS_TO_PROPAGATE

    assert set(session.LOCAL_INSTANCE_ENV) == {ENABLE_PREEMPTION_WATCHER_ENV_VAR} == {WATCHER}
    assert WATCHER in ENV_VARS_TO_PROPAGATE          # handed on to each Train controller too


@pytest.mark.parametrize("user_value", [None, "1"])
def test_own_instance_processes_inherit_its_environment_and_the_driver_gets_its_own_back(monkeypatch, user_value):
    if user_value is None:
        monkeypatch.delenv(WATCHER, raising=False)
    else:
        monkeypatch.setenv(WATCHER, user_value)
    if ray.is_initialized():                 # a shared instance of an earlier module
        ray.shutdown()
    with session.ray_session(num_cpus=1):
        @ray.remote(num_cpus=0)
        def seen() -> str | None:
            return os.environ.get(WATCHER)

        # the instance's workers (Train controllers, a sweep's trial drivers) see it; a value
        # the user set wins
        assert ray.get(seen.remote()) == (user_value or "0")
        # the dashboard stays: it serves the State API Train's placement-group cleaner polls
        assert ray._private.worker._global_node.webui_url
    assert not ray.is_initialized()
    assert os.environ.get(WATCHER) == user_value
