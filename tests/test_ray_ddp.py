"""Ray Train DDP on a real local Ray instance: ranks stay in sync."""
from __future__ import annotations

import functools

import pytest

from distfair import tracking
from distfair.config import validate
from distfair.distributed import run_configuration

pytestmark = pytest.mark.ray


def test_ddp_keeps_parameters_identical_on_all_ranks(ray_local, tmp_path, tiny_cfg_dict):
    tiny_cfg_dict["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 1}}
    tiny_cfg_dict["seeds"] = [0]
    cfg = validate(tiny_cfg_dict, "ddp.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.prepare_experiment(uri, "ddp")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="ddp")
    child = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    outcome = run_configuration(cfg, child_run_ids={0: child},
                                seed_logger=functools.partial(tracking.SeedRunLogger, uri),
                                run_name="ddp-test", storage_path=str(tmp_path / "storage"), log=print)
    assert outcome.ok, outcome.errors
    prints = outcome.results[0]["param_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    # every test sample counted exactly once although evaluation was sharded over 2 ranks
    n = sum(map(sum, outcome.results[0]["confusion"]["clean"]))
    assert n == 30          # 120 synthetic samples, test_fraction 0.25
