"""A ``train.init_from`` or teacher (``defense.teacher``) MLflow run that was deleted or never
existed: ``distfair run`` exits 2 before anything starts, with ``FILE: key: MLflow run <id> was
deleted`` (or that the id is neither a file nor a run), and creates no run and no Ray instance.

No training: the runs are made directly with MLflow's client in a SQLite store, with a real
engine-format checkpoint as their ``checkpoint/last.pt`` artifact."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from distfair import cli, tracking
from distfair.models import build_model

#: a student that reads a teacher (the data-free FERD) on the digits set, as in test_ferd_ray
STUDENT = {
    "defense": {"name": "ferd", "iterations_per_epoch": 2, "batch_size": 16, "eps": 0.1, "alpha": 0.05, "steps": 2,
                "reweight_steps": 2, "loop": "alternating"},
    "dataset": {"name": "digits", "split_seed": 0, "val_fraction": 0.15, "test_fraction": 0.2},
    "model": {"name": "digits_cnn", "width": 4},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "eval": {"attacks": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}]},
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "seeds": [0, 1],
}


def _checkpoint(path, model_name: str, num_classes: int, in_shape: tuple, **options):
    """A file shaped like the engine's epoch checkpoint (what resolve_* reads)."""
    model = build_model(model_name, num_classes=num_classes, in_shape=in_shape, **options)
    torch.save({"model": model.state_dict(), "model_name": model_name, "model_config": {"name": model_name, **options},
                "num_classes": num_classes, "in_shape": in_shape}, path)
    return path


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (creating its schema is the slow part)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    return uri, tracking.prepare_experiment(uri, "earlier")


@pytest.fixture
def store(database, tmp_path):
    """Fresh runs in the module's store: one configuration run (two FINISHED seed runs) for mlp
    on the tiny synthetic set and one seed run for digits_cnn, each seed run holding
    checkpoint/last.pt."""
    uri, exp = database
    client = MlflowClient(uri)

    def seed_run(parent: str, seed: int, ckpt) -> str:
        run_id = tracking.get_or_create_seed_run(uri, exp, parent, seed)
        client.log_artifact(run_id, str(ckpt), "checkpoint")
        client.set_terminated(run_id, "FINISHED")
        return run_id

    (tmp_path / "mlp").mkdir()
    mlp = _checkpoint(tmp_path / "mlp" / "last.pt", "mlp", 3, (6,), hidden=16)
    config_run = tracking.start_parent_run(uri, exp, {}, run_name="pre")
    seeds = {s: seed_run(config_run, s, mlp) for s in (0, 1)}
    client.set_terminated(config_run, "FINISHED")
    (tmp_path / "teacher").mkdir()
    teacher_ckpt = _checkpoint(tmp_path / "teacher" / "last.pt", "digits_cnn", 10, (1, 8, 8), width=4)
    teacher_parent = tracking.start_parent_run(uri, exp, {}, run_name="teacher")
    teacher = seed_run(teacher_parent, 0, teacher_ckpt)
    client.set_terminated(teacher_parent, "FINISHED")
    return {"uri": uri, "client": client, "config_run": config_run, "seed_runs": seeds, "teacher": teacher,
            "teacher_parent": teacher_parent}


def _run(tmp_path, capsys, data: dict, uri: str) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    code = cli.main(["run", str(path), "--tracking-uri", uri, "--experiment", "now",
                     "--storage-path", str(tmp_path / "storage")])
    return code, capsys.readouterr().err


def _nothing_started(store, tmp_path) -> None:
    assert store["client"].get_experiment_by_name("now") is None           # no experiment, so no run
    assert not (tmp_path / "storage" / "logs").exists()                    # no Ray session was opened


@pytest.mark.parametrize("which", ["config_run", "seed_run"])
def test_a_deleted_init_from_run_is_refused_before_anything_starts(which, store, tmp_path, capsys, monkeypatch,
                                                                   tiny_cfg_dict):
    monkeypatch.chdir(tmp_path)
    run_id = store["config_run"] if which == "config_run" else store["seed_runs"][1]
    store["client"].delete_run(run_id)
    tiny_cfg_dict["train"]["init_from"] = run_id
    code, err = _run(tmp_path, capsys, tiny_cfg_dict, store["uri"])
    assert code == 2, err
    assert f"cfg.yaml: train.init_from: MLflow run {run_id} was deleted" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    _nothing_started(store, tmp_path)


def test_a_deleted_teacher_run_is_refused_naming_the_reference_key(store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = copy.deepcopy(STUDENT)
    data["defense"]["teacher"] = store["teacher"]
    store["client"].delete_run(store["teacher"])
    code, err = _run(tmp_path, capsys, data, store["uri"])
    assert code == 2, err
    assert f"cfg.yaml: defense.teacher: MLflow run {store['teacher']} was deleted" in err
    assert len(err.strip().splitlines()) == 1
    _nothing_started(store, tmp_path)


def test_a_run_id_that_does_not_exist_is_refused_for_both_keys(store, tmp_path, capsys, monkeypatch, tiny_cfg_dict):
    monkeypatch.chdir(tmp_path)
    missing = "f" * 32
    tiny_cfg_dict["train"]["init_from"] = missing
    code, err = _run(tmp_path, capsys, tiny_cfg_dict, store["uri"])
    assert code == 2 and f"cfg.yaml: train.init_from: {missing!r} is neither a file nor a run" in err
    data = copy.deepcopy(STUDENT)
    data["defense"]["teacher"] = missing
    code, err = _run(tmp_path, capsys, data, store["uri"])
    assert code == 2 and f"cfg.yaml: defense.teacher: {missing!r} is neither a file nor a run" in err
    _nothing_started(store, tmp_path)


def test_the_same_runs_resolve_while_they_exist(store, tmp_path):
    """The refusals above are about deletion, not about these runs: before it they resolve."""
    from distfair.config import validate
    from distfair.experiment.run import resolve_init_from, resolve_references

    cfg = validate({**copy.deepcopy(STUDENT), "defense": {**STUDENT["defense"], "teacher": store["teacher"]}}, "s.yaml")
    refs = resolve_references(cfg, store["uri"], tmp_path / "storage")
    assert {s: r["teacher"].endswith("last.pt") for s, r in refs.items()} == {0: True, 1: True}
    from conftest import TINY  # tests/ is on sys.path under pytest

    tiny = validate({**copy.deepcopy(TINY), "train": {**TINY["train"], "init_from": store["config_run"]}}, "t.yaml")
    assert sorted(resolve_init_from(tiny, store["uri"], tmp_path / "storage")) == [0, 1]
