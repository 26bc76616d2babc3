"""The full defense lifecycle through the engine and Ray, with a toy data-free defense
(tests/toy_defenses.py: noise labelled by a fixed teacher, its own generator network, Adam
and counters): it trains without touching the training set, checkpoints its own state,
resumes exactly, evaluates on the real test set and runs through real Ray Train + MLflow."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from distfair.config import validate
from distfair.defenses import DEFENSES
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME
from toy_defenses import NAME, DataFreeDistill, NoSamples, make_teacher, save_teacher, untimed

TOY = {
    "defense": {"name": NAME, "steps_per_epoch": 4, "batch_size": 16},
    "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 6},
    "model": {"name": "mlp", "hidden": 16},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "eval": {"attacks": [{"name": "pgd5", "attack": "pgd", "eps": 0.1, "steps": 5}]},
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "seeds": [0],
}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(DEFENSES, NAME, DataFreeDistill)


@pytest.fixture
def teacher_path(tmp_path) -> str:
    return str(save_teacher(tmp_path / "teacher.pt", make_teacher((6,), 3, seed=11), (6,), 3))


@pytest.fixture
def cfg(toy_registered):
    return validate(copy.deepcopy(TOY), "toy.yaml")




def test_toy_trains_without_the_training_set_and_checkpoints_its_state(cfg, teacher_path, tmp_path, monkeypatch):
    import dataclasses

    import distfair.engine.train as train

    real = train.build_dataset
    monkeypatch.setattr(train, "build_dataset", lambda *a, **k: (lambda d: dataclasses.replace(
        d, train=NoSamples(len(d.train))))(real(*a, **k)))
    result = run_seed(cfg, 0, workdir=tmp_path / "run", references={"teacher": teacher_path})
    assert [row["defense_steps_done"] for row in result.history] == [0.0, 4.0]     # state carried over
    assert all({"train_loss", "train_disagreement", "train_student_ce"} <= row.keys() for row in result.history)
    assert "robust_acc" in result.metrics and "clean_acc" in result.metrics      # evaluated on the test set
    assert sum(map(sum, result.confusion["clean"])) == 30                        # 120 samples, 25 % test

    state = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=False)
    (defense_state,) = state["defense"]                                          # one per rank
    assert defense_state["steps_done"] == 8
    assert float(defense_state["label_counts"].sum()) == 2 * 4 * 16
    assert defense_state["optimizer"]["state"]                                   # its own Adam has moments


def test_toy_resume_matches_uninterrupted_run(cfg, teacher_path, tmp_path):
    refs = {"teacher": teacher_path}
    cfg3 = copy.deepcopy(cfg)
    cfg3["train"]["epochs"] = 3
    straight = run_seed(cfg3, 5, workdir=tmp_path / "straight", references=refs)

    cfg1 = copy.deepcopy(cfg)
    cfg1["train"]["epochs"] = 1
    run_seed(cfg1, 5, workdir=tmp_path / "resumed", references=refs)             # "crash" after epoch 1
    seen = []
    resumed = run_seed(cfg3, 5, workdir=tmp_path / "resumed", references=refs,
                       on_epoch=lambda e, row, p: seen.append(e))
    assert seen == [1, 2]
    assert untimed(resumed.history) == untimed(straight.history)
    assert resumed.confusion == straight.confusion
    assert {k: v for k, v in resumed.metrics.items() if not k.endswith("time_s")} == \
        {k: v for k, v in straight.metrics.items() if not k.endswith("time_s")}
    assert resumed.param_fingerprints == straight.param_fingerprints
    a, b = (torch.load(tmp_path / d / CHECKPOINT_NAME, weights_only=False)["defense"][0] for d in ("straight", "resumed"))
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    assert torch.equal(a["label_counts"], b["label_counts"]) and a["steps_done"] == b["steps_done"] == 12
    for key, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)


def test_resume_without_restoring_the_defense_state_differs(cfg, teacher_path, tmp_path, monkeypatch):
    """The resume test above is not vacuous: dropping the defense's state changes the run."""
    refs = {"teacher": teacher_path}
    straight = run_seed(cfg, 5, workdir=tmp_path / "straight", references=refs)
    cfg1 = copy.deepcopy(cfg)
    cfg1["train"]["epochs"] = 1
    run_seed(cfg1, 5, workdir=tmp_path / "resumed", references=refs)
    monkeypatch.setattr(DataFreeDistill, "load_state_dict", lambda self, state: None)
    resumed = run_seed(cfg, 5, workdir=tmp_path / "resumed", references=refs)
    assert resumed.history[1]["train_loss"] != straight.history[1]["train_loss"]


def test_toy_needs_its_teacher_reference(cfg, tmp_path):
    with pytest.raises(ValueError, match="teacher"):
        run_seed(cfg, 0, workdir=tmp_path)


def test_defense_state_of_another_world_size_is_refused(cfg, teacher_path, tmp_path):
    run_seed(cfg, 0, workdir=tmp_path, references={"teacher": teacher_path})
    path = tmp_path / CHECKPOINT_NAME
    state = torch.load(path, weights_only=False)
    state["defense"] = state["defense"] * 2
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="2 rank"):
        run_seed(cfg, 0, workdir=tmp_path, references={"teacher": teacher_path})


# ----------------------------------------------------------------------------- real Ray
@pytest.fixture
def ray_with_toy(ray_instance):
    """The session's local Ray instance, whose workers register the toy defenses (setup hook;
    ``tests/conftest.py``)."""
    return ray_instance


@pytest.mark.ray
def test_toy_runs_through_ray_ddp_with_its_metrics_in_mlflow(ray_with_toy, toy_registered, teacher_path, tmp_path):
    from mlflow.tracking import MlflowClient

    from distfair import tracking
    from distfair.distributed import run_configuration

    raw = copy.deepcopy(TOY)
    raw["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 1}}
    cfg = validate(raw, "toy.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.prepare_experiment(uri, "toy")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="toy")
    child = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    outcome = run_configuration(cfg, child_run_ids={0: child},
                                seed_logger=functools.partial(tracking.SeedRunLogger, uri),
                                references={0: {"teacher": teacher_path}},
                                run_name="toy-test", storage_path=str(tmp_path / "storage"), log=print)
    assert outcome.ok, outcome.errors
    result = outcome.results[0]
    prints = result["param_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]                  # the student is DDP-synchronised
    assert [row["defense_steps_done"] for row in result["history"]] == [0.0, 4.0]

    client = MlflowClient(uri)
    metrics = client.get_run(child).data.metrics
    assert {"robust_acc", "clean_acc", "train_disagreement", "val_clean_acc"} <= metrics.keys()
    assert sorted(m.step for m in client.get_metric_history(child, "train_disagreement")) == [0, 1]
    local = client.download_artifacts(child, f"checkpoint/{CHECKPOINT_NAME}", str(tmp_path))
    states = torch.load(local, weights_only=False)["defense"]
    assert len(states) == 2 and [s["steps_done"] for s in states] == [8, 8]
    # each rank drew its own synthetic batches, so each trained its own generator
    assert not torch.equal(states[0]["generator"]["0.weight"], states[1]["generator"]["0.weight"])
