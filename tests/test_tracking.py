"""The MLflow module on a real SQLite store: URI resolution, idempotent child runs, summaries."""
from __future__ import annotations

import json
import math

from mlflow.tracking import MlflowClient

from distfair import tracking


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:///x/y.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x/y.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/y.db", cwd=tmp_path) == "sqlite:////abs/y.db"
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000", cwd=tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/env.db"


def test_seed_runs_are_created_once_and_nested(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    assert tracking.prepare_experiment(uri, "e") == exp
    parent = tracking.start_parent_run(uri, exp, {"train.lr": 0.1, "eval.attacks": [1, 2]}, run_name="p")
    first = tracking.get_or_create_seed_run(uri, exp, parent, 7)
    again = tracking.get_or_create_seed_run(uri, exp, parent, 7)        # a retried seed
    other = tracking.get_or_create_seed_run(uri, exp, parent, 8)
    assert first == again != other
    client = MlflowClient(uri)
    child = client.get_run(first)
    assert child.data.tags["mlflow.parentRunId"] == parent and child.data.params["seed"] == "7"
    assert client.get_run(parent).data.params == {"train.lr": "0.1", "eval.attacks": "[1, 2]"}


def test_parent_summary_and_status(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    summary = {"robust_acc": {"mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6, "ci95_low": 0.3,
                              "ci95_high": 0.7, "n": 2, "values": [0.4, 0.6]},
               "tgt_max": {"mean": None, "std": None, "min": None, "max": None, "ci95_low": None,
                           "ci95_high": None, "n": 0, "values": []}}
    tracking.log_parent_summary(uri, parent, summary, n_seeds=2)
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["n_seeds"] == 2 and m["robust_acc_mean"] == 0.5 and m["robust_acc_std"] == 0.1
    assert not any(k.startswith("tgt_max") for k in m)                 # undefined is not logged as 0
    assert all(math.isfinite(v) for v in m.values())


def test_mark_runs_leaves_finished_runs_alone(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    done = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    open_ = tracking.get_or_create_seed_run(uri, exp, parent, 1)
    MlflowClient(uri).set_terminated(done, "FINISHED")
    tracking.mark_runs(uri, [done, open_], "KILLED")
    client = MlflowClient(uri)
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(open_).info.status == "KILLED"


def test_a_worker_never_reopens_a_run_the_driver_closed(tmp_path):
    """The race behind a flaky Ctrl-C: the driver marks a seed run KILLED, then a worker that
    was just starting that seed must not set it back to RUNNING."""
    import pytest

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    fresh = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    tracking.SeedRunLogger(uri, fresh)                                 # a new seed run opens normally
    assert MlflowClient(uri).get_run(fresh).info.status == "RUNNING"
    tracking.SeedRunLogger(uri, fresh)                                 # and again on a Train retry
    for status, seed in (("KILLED", 1), ("FAILED", 2)):
        closed = tracking.get_or_create_seed_run(uri, exp, parent, seed)
        tracking.mark_runs(uri, [closed], status)
        with pytest.raises(tracking.RunClosedError, match=f"closed as {status}"):
            tracking.SeedRunLogger(uri, closed)
        assert MlflowClient(uri).get_run(closed).info.status == status


def test_an_epoch_a_restarted_group_trains_again_is_logged_once(tmp_path):
    """Ray Train restarts a group from the last checkpoint its controller registered, which can
    be older than the last epoch the seed run logged: that epoch is trained again (same values)
    and must not appear twice in the run's curves."""
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    seed_run = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    first = tracking.SeedRunLogger(uri, seed_run, storage_path=tmp_path)
    for epoch in (0, 1):
        first.log_epoch(epoch, {"epoch": epoch, "train_loss": 1.0 - epoch / 10, "epoch_time_s": 1.0})
    first.flush()
    restarted = tracking.SeedRunLogger(uri, seed_run, storage_path=tmp_path)   # the group's new attempt
    for epoch in (1, 2):
        restarted.log_epoch(epoch, {"epoch": epoch, "train_loss": 1.0 - epoch / 10, "epoch_time_s": 2.0})
    restarted.flush()
    client = MlflowClient(uri)
    for key in ("train_loss", "epoch_time_s"):
        assert sorted(m.step for m in client.get_metric_history(seed_run, key)) == [0, 1, 2]
    assert {m.step: m.value for m in client.get_metric_history(seed_run, "epoch_time_s")} == {0: 1.0, 1: 1.0, 2: 2.0}


def test_an_interrupted_run_closes_runs_reopened_before_ray_shut_down(tmp_path):
    from distfair.experiment.run import Interrupted

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    seeds = [tracking.get_or_create_seed_run(uri, exp, parent, s) for s in (0, 1, 2)]
    client = MlflowClient(uri)
    client.set_terminated(seeds[2], "FINISHED")                        # finished before Ctrl-C: stays so
    tracking.mark_runs(uri, [*seeds, parent], "KILLED")
    client.update_run(seeds[1], status="RUNNING")                      # a worker slipped in between
    err = Interrupted(uri, [*seeds, parent])
    assert isinstance(err, KeyboardInterrupt)
    err.close_again()
    assert [client.get_run(r).info.status for r in (*seeds, parent)] == ["KILLED", "KILLED", "FINISHED", "KILLED"]


def test_an_interrupted_sweep_closes_every_open_run(tmp_path):
    from distfair.experiment.sweep import SweepReport, close_interrupted_sweep

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    sweep = tracking.start_sweep_run(uri, exp, name="s", params={}, lookup={"distfair.sweep_name": "s"})
    configs = [tracking.start_parent_run(uri, exp, {}, run_name=f"c{i}", tags={
        tracking.TAG_PARENT: sweep, tracking.TAG_ROLE: "configuration"}) for i in range(2)]
    seeds = [tracking.get_or_create_seed_run(uri, exp, c, s) for c in configs for s in (0, 1)]
    client = MlflowClient(uri)
    client.set_terminated(seeds[0], "FINISHED")
    for r in seeds[1:]:
        client.update_run(r, status="RUNNING")
    report = SweepReport(experiment="e", sweep_run_id=sweep, spec=None, experiment_id=exp)
    close_interrupted_sweep(report, uri)
    close_interrupted_sweep(report, uri)                               # idempotent
    status = {r: client.get_run(r).info.status for r in (sweep, *configs, *seeds)}
    assert status.pop(seeds[0]) == "FINISHED"
    assert set(status.values()) == {"KILLED"}, status


def _orphan_sweep(tmp_path, trials: dict[str, tuple[dict, str]]):
    """A sweep record with one configuration run per ``{trial id: (params, status)}`` (two
    seed runs each, the first FINISHED, the second with the configuration's status)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    sweep = tracking.start_sweep_run(uri, exp, name="s", params={}, lookup={"distfair.sweep_name": "s"})
    client, runs, seeds = MlflowClient(uri), {}, {}
    for trial, (params, status) in trials.items():
        run = runs[trial] = tracking.start_parent_run(uri, exp, {}, run_name=trial, tags={
            tracking.TAG_PARENT: sweep, tracking.TAG_ROLE: "configuration", "distfair.trial_id": trial,
            "distfair.trial_params": json.dumps(params)})
        seeds[trial] = [tracking.get_or_create_seed_run(uri, exp, run, s) for s in (0, 1)]
        client.set_terminated(seeds[trial][0], "FINISHED")
        for r in (seeds[trial][1], run):
            if status == "RUNNING":
                client.update_run(r, status="RUNNING")
            else:
                client.set_terminated(r, status)
    return uri, exp, sweep, client, runs, seeds


def test_a_resumed_sweep_retires_the_configuration_its_killed_driver_left_open(tmp_path):
    """A trial started after Tune's last snapshot: Tune resumes without it, its runs stay open.
    Once the resumed Tune run is complete they are retired (KILLED, deleted, seed runs too);
    finished configurations and their seeds are untouched."""
    from distfair.experiment.sweep import collect_trials, retire_orphan_configurations

    uri, exp, sweep, client, runs, seeds = _orphan_sweep(tmp_path, {"t0": ({}, "FINISHED"), "t1": ({}, "RUNNING")})
    done, orphan, done_seeds, orphan_seeds = runs["t0"], runs["t1"], seeds["t0"], seeds["t1"]
    said = []
    assert retire_orphan_configurations(uri, exp, sweep, said.append) == [orphan]
    assert len(said) == 1 and orphan in said[0] and "trial t1" in said[0]
    for r in (orphan, *orphan_seeds):
        info = client.get_run(r).info
        assert info.lifecycle_stage == "deleted", r
    assert client.get_run(orphan).info.status == client.get_run(orphan_seeds[1]).info.status == "KILLED"
    assert [r.info.run_id for r in tracking.configuration_runs(uri, exp, sweep)] == [done]
    assert [t.parent_run_id for t in collect_trials(uri, exp, sweep, [])] == [done]
    for r in (done, *done_seeds):
        info = client.get_run(r).info
        assert (info.status, info.lifecycle_stage) == ("FINISHED", "active")
    assert retire_orphan_configurations(uri, exp, sweep, said.append) == []       # nothing left open


def test_a_resumed_trial_takes_over_the_orphan_with_its_parameters_and_the_rest_are_retired(tmp_path):
    """Tune's snapshot held t0 only; the killed driver had finished t1 and started t2 after it,
    and t3 too (other parameters). The resumed seeded searcher suggests t1's and t2's
    parameters again: the new trials take over those records (t1 FINISHED as it was, t2 with
    its finished seed), never twice in one attempt; once Tune is done, the configuration runs
    of trials it does not know are retired, FINISHED or not. The sweep then holds exactly
    Tune's trials, each configuration once."""
    import time

    from distfair.experiment.sweep import adopt_orphan_configuration, retire_orphan_configurations

    p = {f"t{i}": {"defense.lambda_sym": 0.1 * (i + 1), "train.optimizer": "sgd"} for i in range(4)}
    uri, exp, sweep, client, runs, seeds = _orphan_sweep(tmp_path, {
        "t0": (p["t0"], "FINISHED"), "t1": (p["t1"], "FINISHED"), "t2": (p["t2"], "RUNNING"),
        "t3": (p["t3"], "FINISHED")})
    time.sleep(0.01)
    context = {"tracking_uri": uri, "experiment_id": exp, "sweep_run_id": sweep,
               "resumed": {"trials": ["t0"], "attempt": "a2", "started_ms": int(time.time() * 1000)}}
    said = []
    assert adopt_orphan_configuration(context, "t0", p["t0"], "t0 x", said.append) is None     # Tune's own
    assert adopt_orphan_configuration(context, "n1", dict(p["t1"]), "n1 lambda=0.2", said.append) == runs["t1"]
    assert adopt_orphan_configuration(context, "n2", p["t2"], "n2 lambda=0.3", said.append) == runs["t2"]
    assert adopt_orphan_configuration(context, "n4", p["t1"], "n4", said.append) is None       # taken already
    assert adopt_orphan_configuration(context, "n5", {"defense.lambda_sym": 9.0}, "n5", said.append) is None
    assert len(said) == 2 and all("taken over" in line for line in said) and "trial t1" in said[0]
    adopted = client.get_run(runs["t1"])
    assert adopted.data.tags["distfair.trial_id"] == "n1" and adopted.data.tags["distfair.adopted_from_trial"] == "t1"
    assert adopted.info.run_name == "n1 lambda=0.2" and adopted.info.status == "FINISHED"
    assert tracking.find_runs(uri, exp, {"distfair.trial_id": "n2"}) == [runs["t2"]]
    assert adopt_orphan_configuration(context, "n1", p["t1"], "n1", said.append) is None       # found by its tags now

    retired = retire_orphan_configurations(uri, exp, sweep, said.append, {"t0", "n1", "n2", "n5"})
    assert retired == [runs["t3"]] and "FINISHED" in said[-1]
    info = client.get_run(runs["t3"]).info
    assert (info.status, info.lifecycle_stage) == ("FINISHED", "deleted")
    assert all(client.get_run(r).info.lifecycle_stage == "deleted" for r in seeds["t3"])
    left = {r.data.tags["distfair.trial_id"]: r.info.run_id for r in tracking.configuration_runs(uri, exp, sweep)}
    assert left == {"t0": runs["t0"], "n1": runs["t1"], "n2": runs["t2"]}
    # a later attempt (killed again, its snapshot without n2) may take n2's record over again
    context["resumed"] = {"trials": ["t0", "n1"], "attempt": "a3", "started_ms": int(time.time() * 1000) + 1}
    assert adopt_orphan_configuration(context, "m2", p["t2"], "m2", said.append) == runs["t2"]


def test_seed_result_metrics_tags_and_figures(tmp_path, tiny_cfg_dict, seed_figures):
    """A real seed result logged to a SQLite store: self-check findings become tags, every
    figure of the run lands under plots/, subgroup metrics are logged."""
    from distfair.config import validate
    from distfair.engine import run_seed

    tiny_cfg_dict["train"]["epochs"] = 1
    tiny_cfg_dict["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    result = run_seed(validate(tiny_cfg_dict, "tiny.yaml"), 0, workdir=tmp_path / "w").to_dict()
    result["checks"] = result["checks"] + [{"check": "robust_above_clean.pgd5", "message": "made up for the test"}]
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    run_id = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    tracking.SeedRunLogger(uri, run_id).log_result(result, title="syfar, seed 0")
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["distfair.check.robust_above_clean.pgd5"] == "made up for the test"
    assert run.data.tags["distfair.checks"] == f"{len(result['checks'])} warning(s)"
    assert run.data.metrics["group_gap/half"] == result["metrics"]["group_gap/half"]
    plots = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "plots")}
    assert "plots/groups_half.png" in plots and "plots/asymmetry_pgd5.png" in plots and len(plots) == 3 * 3 + 2
    # DISTFAIR_SEED_FIGURES=0: the same record, every document and metric, without plots/
    seed_figures.setenv("DISTFAIR_SEED_FIGURES", "0")
    quiet_id = tracking.get_or_create_seed_run(uri, exp, parent, 1)
    tracking.SeedRunLogger(uri, quiet_id).log_result(result, title="syfar, seed 1")
    quiet = MlflowClient(uri).get_run(quiet_id)
    assert quiet.info.status == "FINISHED" and quiet.data.metrics == run.data.metrics
    drawn = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert {a.path for a in MlflowClient(uri).list_artifacts(quiet_id)} == drawn - {"plots"}


def test_configuration_record_artifact_and_seed_records(tmp_path):
    """``log_parent_summary`` logs the configuration record as ``configuration_result.json``;
    ``finished_seed_records`` reads the seed runs' ``result.json`` and leaves out finished runs
    without one (recorded before records existed) and unfinished runs."""
    import json
    from pathlib import Path

    from distfair.results import record

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    client = MlflowClient(uri)
    with_record, without, running = (tracking.get_or_create_seed_run(uri, exp, parent, s) for s in (0, 1, 2))
    doc = {"schema_version": record.SCHEMA_VERSION, "kind": "seed", "seed": 0, "values": []}
    (tmp_path / record.SEED_RECORD_NAME).write_text(json.dumps(doc))
    client.log_artifact(with_record, str(tmp_path / record.SEED_RECORD_NAME))
    for run_id in (with_record, without):
        client.set_terminated(run_id, "FINISHED")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / record.SEED_RECORD_NAME).write_text(json.dumps({**doc, "seed": 2}))
    client.log_artifact(running, str(tmp_path / "x" / record.SEED_RECORD_NAME))
    assert tracking.finished_seed_records(uri, exp, parent) == {0: doc}

    config_doc = record.configuration_record({"seeds": [0]}, [doc])
    tracking.log_parent_summary(uri, parent, {}, n_seeds=1, configuration_record=config_doc)
    path = client.download_artifacts(parent, record.CONFIGURATION_RECORD_NAME, str(tmp_path / "dl"))
    assert json.loads(Path(path).read_text()) == config_doc


def test_parent_closed_killed_by_the_driver_stays_killed(tmp_path):
    """A sweep trial stopped early: the driver closes the parent KILLED while the trial's
    configuration thread is still finishing; its summary must not turn the parent FAILED."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {"a": 1}, run_name="p")
    tracking.mark_runs(uri, [parent], "KILLED")
    tracking.log_parent_summary(uri, parent, {}, n_seeds=0, status="FAILED")
    assert MlflowClient(uri).get_run(parent).info.status == "KILLED"
    other = tracking.start_parent_run(uri, exp, {"a": 1}, run_name="q")
    tracking.log_parent_summary(uri, other, {}, n_seeds=0, status="FAILED")
    assert MlflowClient(uri).get_run(other).info.status == "FAILED"


def test_importing_the_package_or_its_buffer_loads_no_mlflow():
    """``from distfair import tracking`` (the CLI, the Ray workers' imports) and the outage
    buffer stay free of MLflow; a name's module, with MLflow, is loaded on first use."""
    import subprocess
    import sys

    code = ("import sys; import distfair.tracking.buffer; from distfair import tracking\n"
            "assert 'mlflow' not in sys.modules\n"
            "assert tracking.TAG_PARENT == 'mlflow.parentRunId' and tracking.TrackingUnavailable\n"
            "assert tracking.resolve_tracking_uri('http://h:1') == 'http://h:1'\n"
            "assert 'mlflow' not in sys.modules\n"
            "assert tracking.SeedRunLogger.__module__ == 'distfair.tracking.seed_logger'\n"
            "assert 'mlflow' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_of_the_package_resolves():
    import importlib

    for name in tracking.__all__:
        assert getattr(tracking, name) is getattr(importlib.import_module(
            f"distfair.tracking.{tracking._EXPORTS[name]}"), name)
    assert set(tracking.__all__) <= set(dir(tracking))
    try:
        tracking.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_a_command_closes_only_the_runs_it_opened_itself(tmp_path):
    """A long-lived process (a notebook, the test suite) runs several commands: the runs an
    earlier command created (and its workers closed) are not the next command's to close
    FAILED when that one's tracking server goes away."""
    from distfair.tracking.client import _open_runs, _RetryingClient, forget_open_runs
    from distfair.tracking.unlogged import park_open_runs

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    experiment = tracking.prepare_experiment(uri, "two")
    client = _RetryingClient(uri)
    earlier = client.create_run(experiment).info.run_id          # the earlier command's run
    MlflowClient(uri).set_terminated(earlier, "FINISHED")         # closed by its worker, elsewhere
    forget_open_runs(uri)                                         # the next command starts
    mine = client.create_run(experiment).info.run_id
    assert list(_open_runs[uri]) == [mine]
    park_open_runs(uri, tmp_path / "storage", "the server went away")
    runs = MlflowClient(uri)
    assert runs.get_run(earlier).info.status == "FINISHED"
    assert runs.get_run(mine).info.status == "FAILED"
