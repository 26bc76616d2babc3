"""Adaptive seeds without Ray: the stopping decision on hand cases, the ``seeds`` rule's
validation, the wave loop with a fake trainer, ``--resume``'s rule check, and the bias script."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import TINY
from distfair.config import ConfigError, flatten, validate
from distfair.config.seeds import planned_seeds, seed_rule
from distfair.experiment.adaptive import default_wave, run_waves, stopping_summary
from distfair.experiment.summary import stopping_line
from distfair.metrics import STOP_MAX, STOP_TARGET, ci95_halfwidth, seeds_decision, summarize

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "adaptive_seeds_bias.py"
RULE = {"min": 3, "max": 6, "wave": 2, "until": {"metric": "val_worst_class_acc", "ci95_halfwidth": 0.05}}


# ------------------------------------------------------------------ the decision
def test_halfwidth_of_three_known_values():
    # mean 0.52, s = 0.02, t_{0.975,2} = 4.302653: 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert ci95_halfwidth([0.50, 0.52, 0.54]) == pytest.approx(0.0496827, abs=1e-6)
    assert ci95_halfwidth([0.5]) is None and ci95_halfwidth([None, 0.5]) is None
    # the reported interval's own half-width, before clipping to [0, 1]
    s = summarize([0.50, 0.52, 0.54])
    assert ci95_halfwidth([0.50, 0.52, 0.54]) == pytest.approx((s["ci95_high"] - s["ci95_low"]) / 2)
    assert ci95_halfwidth([0.99, 1.0, 0.97]) == pytest.approx(stats.t.ppf(0.975, 2) * np.std([0.99, 1.0, 0.97], ddof=1)
                                                              / math.sqrt(3))


@pytest.mark.parametrize("target, stop, reason", [(0.05, True, STOP_TARGET), (0.0496, False, None)])
def test_stops_once_the_halfwidth_is_at_most_the_target(target, stop, reason):
    d = seeds_decision([0.50, 0.52, 0.54], ran=3, min_seeds=3, max_seeds=20, target=target, wave=2)
    assert (d.stop, d.reason, d.n) == (stop, reason, 3)
    assert d.next_seeds == (0 if stop else 2)


def test_never_stops_on_the_target_below_min():
    d = seeds_decision([0.50, 0.50001], ran=2, min_seeds=3, max_seeds=20, target=0.5, wave=4)
    assert not d.stop and d.next_seeds == 1            # the first wave brings it up to min


def test_stops_at_max_and_caps_the_last_wave():
    wide = [0.1, 0.9, 0.2, 0.8]
    d = seeds_decision(wide, ran=4, min_seeds=3, max_seeds=6, target=0.01, wave=4)
    assert not d.stop and d.next_seeds == 2             # never beyond max
    d = seeds_decision(wide + [0.3, 0.7], ran=6, min_seeds=3, max_seeds=6, target=0.01, wave=4)
    assert (d.stop, d.reason) == (True, STOP_MAX) and d.halfwidth == pytest.approx(ci95_halfwidth(wide + [0.3, 0.7]))


def test_failed_seeds_count_toward_max_but_give_no_value():
    # 3 run, one failed: two values; their half-width is tiny but below min values -> go on
    d = seeds_decision([0.5, 0.5001], ran=3, min_seeds=3, max_seeds=4, target=0.5, wave=1)
    assert not d.stop and d.next_seeds == 1 and d.n == 2
    d = seeds_decision([0.5, 0.5001, None], ran=4, min_seeds=3, max_seeds=4, target=0.5, wave=1)
    assert (d.stop, d.reason) == (True, STOP_MAX)


def test_rejects_an_impossible_rule():
    with pytest.raises(ValueError):
        seeds_decision([], ran=0, min_seeds=1, max_seeds=3, target=0.1, wave=1)


# ------------------------------------------------------------------ the wave loop
def _fake(values_by_seed: dict[int, float | None], fail: set[int] = frozenset()):
    done: dict[int, float | None] = {}
    waves: list[list[int]] = []

    def train(seeds):
        waves.append(list(seeds))
        done.update({s: values_by_seed[s] for s in seeds if s not in fail})
        return {s: "loss is nan at epoch 1, batch 1" for s in seeds if s in fail}

    return done, waves, train


def test_waves_stop_at_min_when_the_values_agree():
    done, waves, train = _fake({s: 0.5 + 0.001 * s for s in range(6)})
    out = run_waves(RULE, wave=2, values=lambda: dict(done), train=train, log=lambda m: None)
    assert waves == [[0, 1, 2]] and out.decision.reason == STOP_TARGET and out.waves == 1


def test_waves_run_to_max_when_the_values_spread():
    done, waves, train = _fake({s: (0.1 if s % 2 else 0.9) for s in range(6)})
    lines: list[str] = []
    out = run_waves(RULE, wave=2, values=lambda: dict(done), train=train, log=lines.append)
    assert waves == [[0, 1, 2], [3, 4], [5]] and out.decision.reason == STOP_MAX and out.started == list(range(6))
    assert "wave 2 adds seeds 3,4" in "\n".join(lines) and "stopped (max seeds) after 6 seed(s)" in lines[-1]


def test_waves_go_on_past_a_failed_seed():
    done, waves, train = _fake({s: 0.5 + 0.001 * s for s in range(6)}, fail={1})
    out = run_waves(RULE, wave=2, values=lambda: dict(done), train=train, log=lambda m: None)
    # 0 and 2 finished (two values < min 3): the next wave brings seeds 3 and 4
    assert waves == [[0, 1, 2], [3, 4]] and out.errors == {1: "loss is nan at epoch 1, batch 1"}
    assert out.decision.reason == STOP_TARGET and out.decision.n == 4


def test_resumed_waves_keep_finished_seeds_and_redo_the_lowest_missing():
    # an earlier attempt finished 0, 1 and 3 (2 was killed): the first wave is seed 2 alone
    values = {s: (0.1 if s % 2 else 0.9) for s in range(6)}
    done, waves, train = _fake(values)
    done.update({0: values[0], 1: values[1], 3: values[3]})
    run_waves(RULE, wave=2, values=lambda: dict(done), train=train, log=lambda m: None)
    assert waves[0] == [2, 4] and sorted(done) == list(range(6))


def test_a_finished_attempt_trains_nothing():
    done, waves, train = _fake({})
    done.update({0: 0.5, 1: 0.5, 2: 0.5001})
    out = run_waves(RULE, wave=2, values=lambda: dict(done), train=train, log=lambda m: None)
    assert waves == [] and out.decision.reason == STOP_TARGET and out.waves == 0


def test_default_wave_is_the_worker_groups():
    class Handle:
        slots = 3

    assert default_wave(dict(RULE, wave=None), Handle()) == 3
    assert default_wave(dict(RULE, wave=None), None) == 1
    assert default_wave(RULE, Handle()) == 2


def test_stopping_summary_and_line():
    per_seed = {0: {"val_worst_class_acc": 0.50}, 1: {"val_worst_class_acc": 0.52}, 2: {"val_worst_class_acc": 0.54}}
    s = stopping_summary(RULE, per_seed, reason=STOP_TARGET, ran=4, waves=2)
    assert s["halfwidth"] == pytest.approx(0.0496827, abs=1e-6) and s["n_seeds"] == 3 and s["seeds_run"] == 4
    assert stopping_line(s).startswith("Adaptive seeds: target reached after 4 seed(s) (min 3, max 6); "
                                       "val_worst_class_acc 95% CI half-width 0.0497 over 3")
    json.dumps(s)


# ------------------------------------------------------------------ configuration
def _cfg(seeds) -> dict:
    raw = copy.deepcopy(TINY)
    raw["seeds"] = seeds
    return validate(raw, "tiny.yaml")


def test_rule_resolves_with_defaults():
    cfg = _cfg({"min": 3, "max": 5, "until": {"metric": "val_worst_class_acc", "ci95_halfwidth": 1}})
    assert seed_rule(cfg) == {"min": 3, "max": 5, "wave": None,
                              "until": {"metric": "val_worst_class_acc", "ci95_halfwidth": 1.0}}
    assert planned_seeds(cfg) == [0, 1, 2, 3, 4]
    assert {k: v for k, v in flatten(cfg).items() if k.startswith("seeds")} == {
        "seeds.min": 3, "seeds.max": 5, "seeds.wave": None, "seeds.until.metric": "val_worst_class_acc",
        "seeds.until.ci95_halfwidth": 1.0}
    fixed = _cfg(4)
    assert seed_rule(fixed) is None and planned_seeds(fixed) == [0, 1, 2, 3]


@pytest.mark.parametrize("seeds, key, reason", [
    ({"min": 1, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}}, "seeds.min", ">= 2"),
    ({"min": 3, "max": 2, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}}, "seeds.max",
     ">= seeds.min (3)"),
    ({"min": 3, "max": 5, "until": {"metric": "worst_class_acc", "ci95_halfwidth": 0.1}}, "seeds.until.metric",
     "selection never sees the test set; use 'val_worst_class_acc'"),
    ({"min": 3, "max": 5, "until": {"metric": "train_loss", "ci95_halfwidth": 0.1}}, "seeds.until.metric",
     "training quantity"),
    ({"min": 3, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0}}, "seeds.until.ci95_halfwidth",
     "> 0"),
    ({"min": 3, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": True}},
     "seeds.until.ci95_halfwidth", "> 0"),
    ({"min": 3, "max": 5, "wave": 0, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}}, "seeds.wave",
     ">= 1"),
    ({"min": 3, "max": 5}, "seeds.until", "required"),
    ({"min": 3, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1, "p": 1}}, "seeds.until.p",
     "unknown key"),
    ({"min": 3, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}, "tol": 1}, "seeds.tol",
     "unknown key"),
    ("many", "seeds", "adaptive rule"),
])
def test_rule_problems_name_the_key(seeds, key, reason):
    with pytest.raises(ConfigError) as err:
        _cfg(seeds)
    assert any(k == key and reason in r for k, r in err.value.problems), err.value.problems
    assert f"tiny.yaml: {key}: " in str(err.value)


def test_a_sweep_refuses_adaptive_seeds(tmp_path):
    import yaml

    from distfair.experiment.sweep import load_sweep

    raw = copy.deepcopy(TINY)
    raw["seeds"] = {"min": 2, "max": 3, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}}
    raw["space"] = {"params": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                    "objective": [{"metric": "val_robust_acc"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="seeds: adaptive seeds"):
        load_sweep(str(path))


def test_resume_refuses_another_rule():
    from distfair.experiment.resume import _rule_params, _same_rule

    rule = _cfg({"min": 3, "max": 5, "until": {"metric": "val_robust_acc", "ci95_halfwidth": 0.1}})["seeds"]
    logged = {k: str(v) for k, v in _rule_params(rule).items()}
    _same_rule(rule, {"run_id": "r", "seed_rule": logged})
    _same_rule(None, {"run_id": "r", "seed_rule": None})
    with pytest.raises(ValueError, match="another adaptive rule"):
        _same_rule(dict(rule, max=6), {"run_id": "r", "seed_rule": logged})
    with pytest.raises(ValueError, match="fixed seed list"):
        _same_rule(rule, {"run_id": "r", "seed_rule": None})
    with pytest.raises(ValueError, match="ran adaptive seeds"):
        _same_rule(None, {"run_id": "r", "seed_rule": logged})


# ------------------------------------------------------------------ the bias script
def _script():
    spec = importlib.util.spec_from_file_location("adaptive_seeds_bias", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_halfwidth_is_the_products():
    x = np.random.default_rng(1).normal(0.5, 0.02, (4, 7))
    _, halfwidth = _script().running_intervals(x)
    for row in range(4):
        for n in range(2, 8):
            assert halfwidth[row, n - 1] == pytest.approx(ci95_halfwidth(list(x[row, :n])), rel=1e-6)


def test_bias_script_quick():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True, text=True,
                         timeout=120, check=True)
    rows = {(r["distribution"], r["min"], r["max"]): r for r in json.loads(out.stdout)["rows"]}
    fixed = rows[("normal", 20, 20)]            # min = max: no stopping rule, the t interval's own 95%
    assert fixed["mean_seeds"] == 20 and abs(fixed["coverage"] - 0.95) < 0.03
    adaptive = rows[("normal", 3, 20)]
    assert 3 <= adaptive["mean_seeds"] < 20 and adaptive["coverage"] < fixed["coverage"]
    table = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120,
                           check=True).stdout
    assert "| distribution | min | max | target d | wave | coverage | mean seeds |" in table


# ------------------------------------------------------------------ the run layer on a real store, no Ray
class _Trainer:
    """Stands in for ``distfair.distributed.run_configuration``: logs the rule's metric on each
    seed run and finishes it (a seed in ``fail`` gets no result; ``interrupt_at``: Ctrl-C on
    the wave that starts with that seed)."""

    def __init__(self, uri: str, values: dict[int, float], fail=(), interrupt_at: int | None = None):
        self.uri, self.values, self.fail, self.interrupt_at = uri, values, set(fail), interrupt_at
        self.waves: list[list[int]] = []

    def __call__(self, cfg, *, child_run_ids, **_):
        from mlflow.tracking import MlflowClient

        from distfair.distributed import ConfigurationOutcome

        seeds = list(cfg["seeds"])
        if seeds[0] == self.interrupt_at:
            raise KeyboardInterrupt
        self.waves.append(seeds)
        client, outcome = MlflowClient(self.uri), ConfigurationOutcome()
        for seed in seeds:
            if seed in self.fail:
                outcome.errors[seed] = "loss is nan at epoch 1, batch 1"
                continue
            client.log_metric(child_run_ids[seed], "val_worst_class_acc", self.values[seed])
            client.log_metric(child_run_ids[seed], "worst_class_acc", self.values[seed] - 0.01)
            client.set_terminated(child_run_ids[seed], "FINISHED")
        return outcome


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/m.db"


def _adaptive_cfg(target: float, *, max_seeds: int = 4, wave=None) -> dict:
    return _cfg({"min": 2, "max": max_seeds, "wave": wave,
                 "until": {"metric": "val_worst_class_acc", "ci95_halfwidth": target}})


def _run(cfg, uri, tmp_path, experiment, **kw):
    from distfair.experiment.run import run_configuration_with_tracking

    return run_configuration_with_tracking(cfg, config_path=str(tmp_path / "tiny.yaml"), experiment=experiment,
                                           tracking_uri=uri, storage_path=tmp_path / "runs", log=lambda _: None,
                                           init_paths={}, references={}, **kw)


def _parent(uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id)


SPREAD = {0: 0.9, 1: 0.1, 2: 0.8, 3: 0.2, 4: 0.7}
CLOSE = {0: 0.50, 1: 0.51, 2: 0.52, 3: 0.53, 4: 0.54}


def test_adaptive_run_records_why_it_stopped(store, tmp_path, monkeypatch):
    trainer = _Trainer(store, CLOSE)
    monkeypatch.setattr("distfair.distributed.run_configuration", trainer)
    report = _run(_adaptive_cfg(1.0), store, tmp_path, "wide")
    assert trainer.waves == [[0, 1]] and report.seeds == [0, 1]
    parent = _parent(store, report.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["distfair.seeds.stop_reason"] == "target reached"
    assert parent.data.metrics["n_seeds"] == 2 and parent.data.metrics["n_waves"] == 1
    assert parent.data.metrics["val_worst_class_acc_ci95_halfwidth"] == pytest.approx(ci95_halfwidth([0.50, 0.51]))
    assert parent.data.params["seeds.max"] == "4" and "seeds" not in parent.data.params
    assert report.to_json()["stopping"]["reason"] == "target reached"
    assert "Adaptive seeds: target reached after 2 seed(s)" in parent.data.tags["mlflow.note.content"]


def test_adaptive_run_goes_to_max_in_waves_past_a_failed_seed(store, tmp_path, monkeypatch):
    trainer = _Trainer(store, SPREAD, fail={1})
    monkeypatch.setattr("distfair.distributed.run_configuration", trainer)
    report = _run(_adaptive_cfg(1e-6, wave=1), store, tmp_path, "narrow")
    assert trainer.waves == [[0, 1], [2], [3]] and report.seeds == [0, 2, 3] and list(report.errors) == [1]
    parent = _parent(store, report.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["distfair.seeds.stop_reason"] == "max seeds"
    assert parent.data.metrics["n_seeds"] == 3 and parent.data.metrics["n_failed"] == 1
    assert report.stopping["seeds_run"] == 4 and report.stopping["n_seeds"] == 3


def test_resume_of_an_adaptive_run_keeps_its_finished_seeds(store, tmp_path, monkeypatch):
    from distfair.experiment.outcome import Interrupted
    from distfair.experiment.resume import find_earlier_attempt

    cfg = _adaptive_cfg(1e-6, max_seeds=5, wave=2)
    monkeypatch.setattr("distfair.distributed.run_configuration", _Trainer(store, SPREAD, interrupt_at=2))
    with pytest.raises(Interrupted):
        _run(cfg, store, tmp_path, "resumed")
    attempt = find_earlier_attempt(cfg, config_path=str(tmp_path / "tiny.yaml"), experiment="resumed",
                                   tracking_uri=store)
    assert attempt.adaptive and attempt.finished == [0, 1] and not attempt.complete
    with pytest.raises(ValueError, match="another adaptive rule"):
        find_earlier_attempt(_adaptive_cfg(1e-6, max_seeds=6, wave=2), config_path=str(tmp_path / "tiny.yaml"),
                             experiment="resumed", tracking_uri=store)
    trainer = _Trainer(store, SPREAD)
    monkeypatch.setattr("distfair.distributed.run_configuration", trainer)
    report = _run(cfg, store, tmp_path, "resumed", resume_parent=attempt.run_id)
    assert trainer.waves == [[2, 3], [4]] and report.seeds == [0, 1, 2, 3, 4]
    assert report.stopping["reason"] == "max seeds" and report.parent_run_id == attempt.run_id
    again = find_earlier_attempt(cfg, config_path=str(tmp_path / "tiny.yaml"), experiment="resumed",
                                 tracking_uri=store)
    assert again.complete and again.stop_reason == "max seeds"
