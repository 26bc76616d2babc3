"""``distfair run FILE --resume`` (issue 15): after the driver was killed with SIGKILL, only the
missing seeds are trained, the finished seed runs are kept as they are, the parent's statistics
are recomputed over every seed and MLflow ends with exactly one FINISHED run per seed.

The kill is real (SIGKILL to the driver process of a real ``distfair run``), and so is every
store: SQLite MLflow stores read back through MLflow's client."""
from __future__ import annotations

import copy
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY, call_cli, stop_process_group
from distfair import tracking
from distfair.cli import _resume_command, build_parser, main
from distfair.config import load_configurations
from distfair.experiment.run import config_hash, find_earlier_attempt

EXPERIMENT = "resume"


def _main(capfd, *argv: str) -> subprocess.CompletedProcess:
    """The command in this process, for the paths that start no Ray instance (a refusal, or a
    resume with nothing left to train): no interpreter and import start-up per call."""
    capfd.readouterr()
    code = main(list(argv))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out, err)


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _seed_runs(runs: list) -> list:
    return [r for r in runs if "distfair.seed" in r.data.tags]


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, ray_session_instance):
    """A 3-seed ``distfair run`` (one seed at a time) in its own process, killed with SIGKILL once
    a seed finished, then ``distfair run FILE --resume --json`` in this process (the session's
    Ray instance). Returns what the tests compare."""
    root = tmp_path_factory.mktemp("resume")
    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = [0, 1, 2]
    cfg["train"]["epochs"] = 6                      # the later seeds are still training at the kill
    cfg["eval"]["attacks"] = cfg["eval"]["attacks"][:1]
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    uri = f"sqlite:///{root}/mlflow.db"
    tracking.prepare_experiment(uri, EXPERIMENT)    # one creator of the fresh store, polled below
    args = ["tiny.yaml", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--num-cpus", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", *args], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(root / "killed.err", "w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            seeds = _seed_runs(_runs(uri))
            states = Counter(r.info.status for r in seeds)
            if states["FINISHED"] >= 1 and states["RUNNING"] >= 1:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"no seed finished while another ran (exit {proc.poll()}):\n"
                        + (root / "killed.err").read_text()[-3000:])
        os.kill(proc.pid, signal.SIGKILL)           # the driver only: it dies without closing anything
        proc.wait(30)
        # What Ray left behind (its dashboard and runtime-env agents outlive the driver for a while)
        left = subprocess.run(["ps", "-o", "pid=,comm=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    finally:
        stop_process_group(proc)
    before = {r.info.run_id: r for r in _runs(uri)}
    resumed = call_cli("run", *args, "--resume", "--json", cwd=root)
    return {"root": root, "uri": uri, "args": args, "before": before, "resumed": resumed, "left": left}


@pytest.mark.ray
def test_resume_after_sigkill_trains_only_the_missing_seeds(killed_then_resumed):
    uri, before, resumed = killed_then_resumed["uri"], killed_then_resumed["before"], killed_then_resumed["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    print("left by the killed driver:", killed_then_resumed["left"].split() or "nothing")
    finished_before = {r.data.tags["distfair.seed"]: r for r in _seed_runs(list(before.values()))
                       if r.info.status == "FINISHED"}
    assert finished_before and len(finished_before) < 3
    [parent_before] = [r for r in before.values() if r.data.tags.get("distfair.role") == "configuration"]
    assert parent_before.info.status == "RUNNING"           # nobody closed it: the driver was killed

    runs = _runs(uri)
    assert not [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    [parent] = [r for r in runs if r.data.tags.get("distfair.role") == "configuration"]
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    seeds = _seed_runs(runs)
    assert sorted(r.data.tags["distfair.seed"] for r in seeds) == ["0", "1", "2"]     # one active run per seed
    assert {r.info.status for r in seeds} == {"FINISHED"}
    by_seed = {r.data.tags["distfair.seed"]: r for r in seeds}
    for seed, old in finished_before.items():                 # kept, not retrained
        assert by_seed[seed].info.run_id == old.info.run_id
        assert by_seed[seed].info.end_time == old.info.end_time
    for seed, run in by_seed.items():                         # the unfinished ones were redone in new runs
        if seed not in finished_before:
            assert run.info.run_id not in before
    retired = [r for r in before.values() if "distfair.seed" in r.data.tags and r.info.status != "FINISHED"]
    client = MlflowClient(uri)
    for old in retired:                                      # closed and deleted, never left RUNNING
        info = client.get_run(old.info.run_id).info
        assert (info.status, info.lifecycle_stage) == ("KILLED", "deleted")
    # the parent's statistics over all three seeds
    assert parent.data.metrics["n_seeds"] == 3
    values = [r.data.metrics["clean_acc"] for r in seeds]
    assert parent.data.metrics["clean_acc_mean"] == pytest.approx(np.mean(values))
    assert parent.data.metrics["clean_acc_std"] == pytest.approx(np.std(values, ddof=1))
    report = json.loads(resumed.stdout)                      # --resume --json: one JSON object
    assert report["parent_run_id"] == parent.info.run_id and report["seeds"] == [0, 1, 2]
    assert report["metrics"]["clean_acc"]["mean"] == pytest.approx(np.mean(values))
    assert f"resuming parent run {parent.info.run_id}" in resumed.stderr


@pytest.mark.ray
def test_resume_of_a_finished_configuration_trains_nothing(killed_then_resumed, capfd, monkeypatch):
    uri, root, args = killed_then_resumed["uri"], killed_then_resumed["root"], killed_then_resumed["args"]
    monkeypatch.chdir(root)
    before = {r.info.run_id: (r.info.status, r.info.end_time) for r in _runs(uri)}
    again = _main(capfd, "run", *args, "--resume", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stderr and "nothing to train" in again.stderr
    assert "Ray:" not in again.stderr                         # no Ray instance was started
    assert {r.info.run_id: (r.info.status, r.info.end_time) for r in _runs(uri)} == before
    [parent] = [r for r in _runs(uri) if r.data.tags.get("distfair.role") == "configuration"]
    report = json.loads(again.stdout)
    assert report["parent_run_id"] == parent.info.run_id
    assert report["metrics"]["clean_acc"]["mean"] == pytest.approx(parent.data.metrics["clean_acc_mean"])


@pytest.mark.ray
def test_resume_of_another_configuration_or_other_seeds_is_refused(killed_then_resumed, capfd, monkeypatch):
    uri, root, args = killed_then_resumed["uri"], killed_then_resumed["root"], killed_then_resumed["args"]
    monkeypatch.chdir(root)
    before = sorted(r.info.run_id for r in _runs(uri))
    other = _main(capfd, "run", *args, "--set", "train.lr=0.07", "--resume")       # --set: another configuration
    assert other.returncode == 2
    assert f"tiny.yaml: --resume: no earlier run of this configuration in experiment '{EXPERIMENT}'" in other.stderr
    seeds = _main(capfd, "run", *args, "--num-seeds", "2", "--resume")
    assert seeds.returncode == 2 and "ran seeds 0,1,2, not 0,1" in seeds.stderr
    assert "Traceback" not in other.stderr + seeds.stderr
    assert sorted(r.info.run_id for r in _runs(uri)) == before


def test_resume_without_any_earlier_run_exits_2_and_creates_nothing(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = _main(capfd, "run", "tiny.yaml", "--resume", "--tracking-uri", "sqlite:///mlflow.db")
    assert done.returncode == 2
    assert "error: tiny.yaml: --resume: no earlier run of this configuration in experiment 'tiny'" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()            # no store, no experiment, no run


def _record_attempt(uri: str, cfg: dict, *, config_file: str, configuration: str | None, finished: bool,
                    extra_tags: dict | None = None) -> str:
    """A configuration run as ``distfair run`` records it (tags, seeds param, one seed run per
    seed with a metric), written through distfair's own tracking functions."""
    experiment_id = tracking.prepare_experiment(uri, EXPERIMENT)
    tags = {"distfair.config_file": config_file, "distfair.config_hash": config_hash(cfg), **(extra_tags or {})}
    if configuration is not None:
        tags["distfair.configuration"] = configuration
    parent = tracking.start_parent_run(uri, experiment_id, {"seeds": cfg["seeds"]}, run_name="p", tags=tags)
    client = MlflowClient(uri)
    for seed in cfg["seeds"]:
        run = tracking.get_or_create_seed_run(uri, experiment_id, parent, seed)
        client.log_metric(run, "clean_acc", 0.5 + seed / 10)
        client.set_terminated(run, "FINISHED" if finished else "KILLED")
    client.set_terminated(parent, "FINISHED" if finished else "KILLED")
    return parent


def test_the_newest_attempt_of_the_same_file_and_configuration_is_found(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = {**copy.deepcopy(TINY), "seeds": [0, 1]}
    older = _record_attempt(uri, cfg, config_file="a/tiny.yaml", configuration=None, finished=True)
    time.sleep(0.01)
    newest = _record_attempt(uri, cfg, config_file="b/tiny.yaml", configuration=None, finished=False)
    time.sleep(0.01)        # started later but not this configuration's run of this file:
    _record_attempt(uri, cfg, config_file="tiny.yaml", configuration=None, finished=True,
                    extra_tags={"distfair.sweep_run": "x"})                       # a sweep trial
    _record_attempt(uri, cfg, config_file="other.yaml", configuration=None, finished=True)   # another file
    _record_attempt(uri, cfg, config_file="tiny.yaml", configuration="smooth", finished=True)  # a named entry
    found = find_earlier_attempt(cfg, config_path="tiny.yaml", experiment=EXPERIMENT, tracking_uri=uri)
    assert found.run_id == newest != older and found.status == "KILLED" and not found.complete
    assert found.seeds == [0, 1] and found.finished == []
    tuned = {**cfg, "train": {**cfg["train"], "lr": 0.07}}
    assert find_earlier_attempt(tuned, config_path="tiny.yaml", experiment=EXPERIMENT, tracking_uri=uri) is None
    with pytest.raises(ValueError, match="ran seeds 0,1, not 0,1,2"):
        find_earlier_attempt({**cfg, "seeds": [0, 1, 2]}, config_path="tiny.yaml", experiment=EXPERIMENT,
                             tracking_uri=uri)


def test_resume_applies_to_each_configuration_of_a_file(tmp_path, capfd, monkeypatch):
    """Both entries of a `configurations:` file already finished: each is reported from MLflow,
    nothing is trained and no Ray instance is started."""
    base = {**copy.deepcopy(TINY), "seeds": [0, 1]}
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump({**base, "configurations": {"low": {"train.lr": 0.01}, "high": {"train.lr": 0.1}}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parents = {name: _record_attempt(uri, cfg, config_file="pair.yaml", configuration=name, finished=True)
               for name, cfg in load_configurations(path)}
    monkeypatch.chdir(tmp_path)
    done = _main(capfd, "run", "pair.yaml", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--resume", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("already finished") == 2 and "Ray:" not in done.stderr
    report = json.loads(done.stdout)["configurations"]
    assert {name: r["parent_run_id"] for name, r in report.items()} == parents
    assert report["low"]["metrics"]["clean_acc"]["mean"] == pytest.approx(0.55)


def test_the_printed_resume_command_repeats_everything_that_names_the_configuration():
    argv = ["run", "dir/my cfg.yaml", "--set", "train.lr=0.01", "--set", "defense.name=trades", "--seeds", "3,1",
            "--experiment", "e", "--tracking-uri", "http://mlflow:5000", "--num-cpus", "2", "--json"]
    command = _resume_command(build_parser().parse_args(argv))
    words = shlex.split(command)
    assert words[:2] == ["distfair", "run"] and words[-1] == "--resume"
    again = build_parser().parse_args(words[1:])
    first = build_parser().parse_args(argv)
    assert {**vars(again), "resume": False} == {**vars(first)} and again.resume
