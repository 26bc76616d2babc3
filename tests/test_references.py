"""Files a defense reads (``Defense.reference_options``, e.g. FERD's ``defense.teacher``):
a checkpoint file, an MLflow seed run id (one teacher for every seed) or an MLflow
configuration run id (each seed reads the same seed's teacher), resolved per seed before
anything starts, with the teacher's architecture taken from its checkpoint; a missing or
mismatched teacher is a configuration error naming ``defense.teacher``."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from distfair import cli, tracking
from distfair.config import validate
from distfair.defenses import DEFENSES, Defense
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME
from distfair.models import build_model, checkpoint_model_spec, model_from_checkpoint
from distfair.experiment.run import resolve_references


class NeedsTeacher(Defense):
    """Distils a teacher's arg-max labels on the training inputs (test only)."""
    name = "needs_teacher"
    needs_attack = False
    reference_options = ("teacher",)

    def __init__(self, *, attack=None, num_classes: int, teacher: str | None = None):
        super().__init__(attack=attack, num_classes=num_classes)
        self.teacher_option = teacher

    def setup(self, ctx):
        super().setup(ctx)
        if "teacher" not in ctx.references:
            raise ValueError("needs_teacher: references['teacher'] is not set")
        self.teacher = model_from_checkpoint(ctx.references["teacher"], ctx.device).requires_grad_(False)

    def loss(self, model, x, y, *, generator=None):
        with torch.no_grad():
            labels = self.teacher(x).argmax(1)
        ce = F.cross_entropy(model(x), labels)
        return ce, {}


@pytest.fixture
def teacher(tiny_cfg_dict, tmp_path):
    """A trained teacher checkpoint (mlp, 3 classes, hidden 24: not the student's width)."""
    cfg = copy.deepcopy(tiny_cfg_dict)
    cfg["model"] = {"name": "mlp", "hidden": 24}
    cfg["train"]["epochs"] = 1
    run_seed(validate(cfg, "teacher.yaml"), 0, workdir=tmp_path / "teacher")
    return tmp_path / "teacher" / CHECKPOINT_NAME


@pytest.fixture
def student_cfg(tiny_cfg_dict, monkeypatch):
    monkeypatch.setitem(DEFENSES, NeedsTeacher.name, NeedsTeacher)
    cfg = copy.deepcopy(tiny_cfg_dict)
    cfg["defense"] = {"name": "needs_teacher"}
    cfg["attack"] = None
    cfg["eval"] = {"attacks": [{"name": "pgd5", "attack": "pgd", "eps": 0.1, "steps": 5}]}
    cfg["train"]["epochs"] = 1
    return cfg


def test_the_teacher_architecture_comes_from_its_checkpoint(teacher):
    spec = checkpoint_model_spec(torch.load(teacher, weights_only=False))
    assert (spec["name"], spec["num_classes"], spec["in_shape"]) == ("mlp", 3, (6,))
    assert spec["options"]["hidden"] == 24                # the resolved model block, defaults included
    model = model_from_checkpoint(teacher)
    assert not model.training
    saved = torch.load(teacher, weights_only=False)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="not a distfair epoch checkpoint"):
        checkpoint_model_spec({"model": {}})


def test_a_file_serves_every_seed_and_reaches_the_defense(teacher, student_cfg, tmp_path):
    student_cfg["defense"]["teacher"] = str(teacher)
    cfg = validate(student_cfg, "student.yaml")
    refs = resolve_references(cfg, f"sqlite:///{tmp_path}/m.db", tmp_path / "storage")
    assert refs == {0: {"teacher": str(teacher.resolve())}, 1: {"teacher": str(teacher.resolve())}}
    result = run_seed(cfg, 0, workdir=tmp_path / "student", references=refs[0])
    assert result.metrics["clean_acc"] >= 0.0
    # without the resolved file the defense says what is missing
    with pytest.raises(ValueError, match="references\\['teacher'\\] is not set"):
        run_seed(cfg, 0, workdir=tmp_path / "student2")


def test_missing_and_mismatched_teachers_name_the_key(teacher, student_cfg, tmp_path, tiny_cfg_dict):
    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(ValueError, match="defense.teacher: defense 'needs_teacher' needs its teacher"):
        resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path)
    student_cfg["defense"]["teacher"] = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="defense.teacher: .*neither a file nor a run"):
        resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path)
    student_cfg["defense"]["teacher"] = str(teacher)
    student_cfg["dataset"]["num_classes"] = 4                    # the teacher knows 3 classes
    with pytest.raises(ValueError, match=r"defense.teacher: .* 3 classes and inputs \(6,\), but dataset "
                                         r"'synthetic' has 4 classes"):
        resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path)
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save(build_model("mlp", num_classes=3, in_shape=(6,)).state_dict(), not_a_checkpoint)
    student_cfg["dataset"]["num_classes"] = 3
    student_cfg["defense"]["teacher"] = str(not_a_checkpoint)
    with pytest.raises(ValueError, match="defense.teacher: .* is not a distfair checkpoint"):
        resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path)


def test_run_ids_resolve_per_seed(teacher, student_cfg, tmp_path):
    """A configuration run gives each seed the same seed's checkpoint; a seed run gives its
    checkpoint to every seed."""
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "teachers")
    client = MlflowClient(uri)
    parent = tracking.start_parent_run(uri, exp, {}, run_name="pgd_at")
    seed_runs = {}
    for seed in (0, 1):
        run_id = tracking.get_or_create_seed_run(uri, exp, parent, seed)
        client.log_artifact(run_id, str(teacher), "checkpoint")
        client.set_terminated(run_id, "FINISHED")
        seed_runs[seed] = run_id
    student_cfg["defense"]["teacher"] = parent
    refs = resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path / "storage")
    assert set(refs) == {0, 1} and refs[0]["teacher"] != refs[1]["teacher"]
    assert all(str(tmp_path / "storage" / "teacher") in r["teacher"] for r in refs.values())
    student_cfg["defense"]["teacher"] = seed_runs[1]
    refs = resolve_references(validate(student_cfg, "s.yaml"), uri, tmp_path / "storage")
    assert refs[0]["teacher"] == refs[1]["teacher"]


def test_defenses_without_references_resolve_nothing(tiny_cfg_dict, tmp_path):
    assert resolve_references(validate(tiny_cfg_dict, "t.yaml"), f"sqlite:///{tmp_path}/m.db", tmp_path) == {}


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_cli_refuses_a_missing_teacher_before_starting(student_cfg, tmp_path, monkeypatch, capsys, write_config,
                                                       command):
    monkeypatch.chdir(tmp_path)
    student_cfg["defense"]["teacher"] = str(tmp_path / "missing.pt")
    if command == "sweep":
        student_cfg["space"] = {"params": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                                "objective": {"metric": "val_robust_acc", "mode": "max"}}
    path = write_config(student_cfg)
    assert cli.main([command, str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "defense.teacher" in err and "Traceback" not in err
    assert not (tmp_path / "distfair_runs").exists()
