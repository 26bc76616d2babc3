"""FERD and its data-free baseline end to end on real Ray with MLflow: a tiny digits teacher
is trained and recorded, then read back from MLflow by its configuration run id (each student
seed distils the same seed's teacher) or one seed run id (every seed the same teacher); and
the shipped FERD files validate, the sweep file with ``--set defense.teacher=...``."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.config import load_config, validate
from distfair.distributed.slots import SlotPool
from distfair.results.record import find_entry
from distfair.experiment.run import run_configuration_with_tracking
from distfair.experiment.sweep import load_sweep

REPO = Path(__file__).resolve().parent.parent

TEACHER = {
    "defense": {"name": "pgd_at"},
    "dataset": {"name": "digits", "split_seed": 0, "val_fraction": 0.15, "test_fraction": 0.2},
    "model": {"name": "digits_cnn", "width": 8},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
    "eval": {"attacks": [{"name": "fgsm", "attack": "fgsm"}]},
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "seeds": [0, 1],
}


def student(name: str, teacher: str) -> dict:
    cfg = copy.deepcopy(TEACHER)
    cfg["defense"] = {"name": name, "teacher": teacher, "iterations_per_epoch": 2, "batch_size": 16,
                      "eps": 0.1, "alpha": 0.05, "steps": 2, "loop": "alternating",
                      **({"reweight_steps": 2} if name == "ferd" else {})}
    cfg["model"] = {"name": "digits_cnn", "width": 4}
    cfg["train"]["epochs"] = 2          # FERD reweights from its second epoch on
    return cfg


@pytest.mark.ray
def test_students_read_their_teachers_back_from_mlflow(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "storage"
    log = lambda msg: None  # noqa: E731
    # one pool of slots for the three configurations, as a multi-configuration `distfair run` has
    pool = SlotPool(validate(TEACHER, "teacher.yaml")["scaling"], storage_path=str(storage), log=log)

    def run(cfg: dict, label: str):
        report = run_configuration_with_tracking(validate(cfg, label), config_path=label, experiment="ferd",
                                                 tracking_uri=uri, storage_path=storage, log=log, pool=pool)
        assert report.errors == {}, report.errors
        return report

    teacher = run(TEACHER, "teacher.yaml")
    ferd = run(student("ferd", teacher.parent_run_id), "ferd.yaml")
    # each seed read the teacher of its own seed (downloaded per teacher seed run)
    downloaded = sorted(p.parent.name for p in (storage / "teacher").rglob("last.pt"))
    client = MlflowClient(uri)
    teacher_seed_runs = sorted(r for r, _ in tracking.seed_run_states(uri, teacher.experiment_id,
                                                                      teacher.parent_run_id).values())
    assert downloaded == teacher_seed_runs
    for metric in ("acc", "worst_class_acc", "nsd"):
        entry = find_entry(ferd.record, split="test", evaluation="fgsm", metric=metric)
        assert entry["n"] == 2 and entry["mean"] is not None
    seed_runs = client.search_runs([ferd.experiment_id],
                                   filter_string=f"tags.`mlflow.parentRunId` = '{ferd.parent_run_id}'")
    assert len(seed_runs) == 2 and all(r.info.status == "FINISHED" for r in seed_runs)
    for r in seed_runs:                          # FERD's own curves reached MLflow
        assert any(k.startswith("train_") and k != "train_loss" for k in r.data.metrics), r.data.metrics
    parent = client.get_run(ferd.parent_run_id)
    assert parent.data.params["defense.teacher"] == teacher.parent_run_id

    one_teacher = teacher_seed_runs[0]
    dfrd = run(student("dfrd", one_teacher), "dfrd.yaml")
    assert find_entry(dfrd.record, split="test", evaluation="clean", metric="acc")["n"] == 2
    pool.close()


def test_shipped_ferd_files_validate(tmp_path, monkeypatch):
    from test_data import write_cifar10

    for name, defense in (("digits_ferd", "ferd"), ("digits_dfrd", "dfrd")):
        cfg = load_config(REPO / "tune_spaces" / f"{name}.yaml", ["defense.teacher=some_run_id"])
        assert cfg["defense"]["name"] == defense and cfg["defense"]["teacher"] == "some_run_id"
        assert cfg["seeds"] == [0, 1, 2, 3, 4]
        assert [a["name"] for a in cfg["eval"]["attacks"]] == ["pgd20", "fgsm", "autoattack"]
    cfg, spec = load_sweep(str(REPO / "tune_spaces" / "digits_ferd.yaml"), overrides=["defense.teacher=abc"])
    assert cfg["defense"]["teacher"] == "abc" and spec.base["defense"]["teacher"] == "abc"
    assert {d.key for d in spec.dims} >= {"defense.gamma", "defense.lambda1", "defense.lambda_uni"}
    assert spec.objective[0].metric == "val_worst_class_acc"
    teacher = load_config(REPO / "tune_spaces" / "digits_teacher.yaml")
    assert teacher["defense"]["name"] == "pgd_at" and teacher["seeds"] == [0, 1, 2, 3, 4]
    write_cifar10(tmp_path, monkeypatch)
    cifar = load_config(REPO / "tune_spaces" / "cifar10_ferd.yaml",
                        [f"dataset.root={tmp_path}", "defense.teacher=x"])
    assert (cifar["model"]["name"], cifar["defense"]["student_steps"], cifar["train"]["epochs"]) == \
        ("resnet18", 400, 220)
    # the official code's loop and schedule (test.py, test.sh): CosineAnnealingLR(T_max=epochs)
    official = cifar["defense"]
    assert (official["loop"], official["gen_steps"], official["warmup"]) == ("official", 200, 20)
    assert cifar["defense"]["utae_network"] == "student" and cifar["train"]["schedule"] == "cosine"
    for name in ("digits_ferd", "digits_dfrd"):         # the README's numbers: the alternating loop, until re-measured
        digits = load_config(REPO / "tune_spaces" / f"{name}.yaml", ["defense.teacher=x"])
        assert digits["defense"]["loop"] == "alternating"
        assert name == "digits_dfrd" or digits["defense"]["utae_network"] == "teacher"
