"""Adaptive seeds end to end: the real command on the session's Ray instance and a real SQLite
MLflow store. A configuration whose half-width target is huge stops at ``min``; one whose target
is tiny runs to ``max``. (The rule, its validation and --resume without Ray:
tests/test_adaptive_seeds_rule.py.)"""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray

#: a validation metric whose value differs between the tiny seeds (their worst-class accuracy is
#: often 0 for every seed after one epoch: a half-width of 0 would stop any rule at min)
METRIC = "val_sym_loss"


def _rule(target: float) -> dict:
    return {"min": 2, "max": 4, "until": {"metric": METRIC, "ci95_halfwidth": target}}


def test_a_wide_target_stops_at_min_and_a_tiny_one_runs_to_max(tmp_path, write_config, tiny_cfg_dict, distfair_cli):
    tiny_cfg_dict["train"]["epochs"] = 1
    reports = {}
    for name, target in (("wide", 100.0), ("tiny", 1e-9)):
        tiny_cfg_dict["seeds"] = _rule(target)
        path = write_config(tiny_cfg_dict, f"{name}.yaml")
        proc = distfair_cli("run", path, "--json", "--experiment", "adaptive", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[name] = (json.loads(proc.stdout), proc.stderr)

    wide, err = reports["wide"]
    assert wide["seeds"] == [0, 1] and wide["stopping"]["reason"] == "target reached"
    assert "Adaptive seeds: target reached after 2 seed(s) (min 2, max 4)" in err
    tiny, err = reports["tiny"]
    assert tiny["seeds"] == [0, 1, 2, 3] and tiny["stopping"]["reason"] == "max seeds"
    assert tiny["stopping"]["waves"] == 3            # one worker group: [0, 1], then one seed a wave
    assert "wave 2 adds seeds 2" in err and "Adaptive seeds: max seeds after 4 seed(s)" in err

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for report, reason, n in ((wide, "target reached", 2), (tiny, "max seeds", 4)):
        parent = client.get_run(report["parent_run_id"])
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["distfair.seeds.stop_reason"] == reason
        assert parent.data.metrics["n_seeds"] == n and parent.data.metrics["n_failed"] == 0
        assert parent.data.metrics[f"{METRIC}_ci95_halfwidth"] == pytest.approx(report["stopping"]["halfwidth"])
        assert parent.data.params["seeds.until.metric"] == METRIC
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(int(c.data.tags["distfair.seed"]) for c in children) == list(range(n))
        assert {c.info.status for c in children} == {"FINISHED"}
