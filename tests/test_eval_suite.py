"""The evaluation suite end to end through ``run_seed`` / ``final_evaluation`` (no Ray):
physical attacks and ROA training on a fake face set with gender subgroups, AutoAttack and
ensembles with their stages and flags, and the self-checks firing on a gradient-masked model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_faces import make_fake_faces
from torch import nn
from torch.utils.data import TensorDataset

from distfair.config import validate
from distfair.data import DataBundle
from distfair.engine import run_seed
from distfair.evaluation import final_evaluation


def face_config(root, **dataset) -> dict:
    return {
        "defense": {"name": "pgd_at"},
        "dataset": {"name": "faces", "root": str(root), "image_size": 16, "test_fraction": 0.25,
                    "val_fraction": 0.15, **dataset},
        "model": {"name": "mlp", "hidden": 16},
        "attack": {"name": "roa", "steps": 2},                # ROA as the inner maximisation
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.05},
        "eval": {"attacks": [
            {"name": "eyeglass", "attack": "eyeglass", "steps": 5},
            {"name": "eyeglass_t", "attack": "eyeglass", "steps": 5, "target": "random"},
            {"name": "face_mask", "attack": "face_mask", "steps": 5},
            {"name": "roa", "attack": "roa", "steps": 2},
        ], "subgroups": {"gender": "metadata"}},
        "seeds": [0],
    }


@pytest.mark.parametrize("per_sample", [False, True])
def test_faces_physical_attacks_roa_training_and_gender_subgroups(tmp_path, per_sample):
    root = make_fake_faces(tmp_path / "faces", per_identity=8, size=16, per_sample=per_sample)
    cfg = validate(face_config(root), "faces.yaml")
    assert all(e["eps"] is None for e in cfg["eval"]["attacks"])   # physical: no ε inherited from ROA
    result = run_seed(cfg, 0, workdir=tmp_path / "w")
    m = result.metrics
    for name in ("eyeglass", "eyeglass_t", "face_mask", "roa"):
        assert 0.0 <= m[f"{name}/robust_acc"] <= 1.0
        assert set(result.subgroups[name]["attributes"]) == {"gender"}
    assert m["robust_acc"] == m["eyeglass/robust_acc"]                 # the first entry is primary
    for evaluation in ("clean_", "", "roa/"):
        assert {f"{evaluation}group_acc/gender/F", f"{evaluation}group_acc/gender/M",
                f"{evaluation}group_gap/gender"} <= set(m)
    kind = result.subgroups["clean"]["attributes"]["gender"]["kind"]
    assert kind == ("sample" if per_sample else "class")
    assert ("max_group_asym/gender" in m) is (not per_sample)
    flags = np.load(result.flags_path)
    assert flags["roa"].mean() == pytest.approx(m["roa/robust_acc"])
    # the clean group accuracies, by hand from the per-sample flags and the identities' genders
    female = np.isin(flags["labels"], [0, 2])          # alice, carol
    if per_sample:
        assert m["clean_group_acc/gender/F"] == pytest.approx(flags["clean"][female].mean())
    else:
        per_class = [flags["clean"][flags["labels"] == c].mean() for c in range(4)]
        assert m["clean_group_acc/gender/F"] == pytest.approx((per_class[0] + per_class[2]) / 2)


def synthetic_config(attacks) -> dict:
    return {
        "defense": {"name": "pgd_at"},
        "dataset": {"name": "synthetic", "num_samples": 150, "num_classes": 3, "dim": 6},
        "model": {"name": "mlp", "hidden": 16},
        "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "eval": {"attacks": attacks},
        "seeds": [0],
    }


def test_autoattack_and_ensemble_stages_flags_and_metrics(tmp_path):
    cfg = validate(synthetic_config([
        {"name": "aa", "attack": "autoattack", "n_iter": 10, "n_queries": 100},
        {"name": "ens", "attack": "ensemble", "members": "fgsm,pgd"},
        {"name": "pgd", "attack": "pgd", "steps": 10},
    ]), "aa.yaml")
    assert cfg["eval"]["attacks"][0]["eps"] == 0.1                    # ε explicit, from the training attack
    result = run_seed(cfg, 0, workdir=tmp_path)
    m, flags = result.metrics, np.load(result.flags_path)
    stages = [f"aa:{s}" for s in ("apgd_ce", "apgd_t", "square")]
    assert set(stages) <= set(flags.files)
    for before, after in zip(["clean"] + stages, stages):              # robust sets only shrink
        assert not np.any(flags[after] & ~flags[before])
    assert np.array_equal(flags["aa:square"], flags["aa"])              # the last stage is the final flag
    assert m["aa/stage_acc/apgd_ce"] == pytest.approx(flags["aa:apgd_ce"].mean())
    assert m["aa/robust_acc"] <= m["clean_acc"]
    assert np.array_equal(flags["ens:pgd"], flags["ens"])
    assert m["aa/robust_acc"] <= m["pgd/robust_acc"] + 0.05           # AutoAttack no weaker than PGD (±noise)


class Quantised(nn.Module):
    """Logits of a rounded input: the input gradient is exactly zero (gradient masking),
    while a score-based black-box attack still sees the decision change."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return torch.round(x * 2) / 2 @ self.weight.T


def test_self_checks_flag_gradient_masking_and_black_box_success(tmp_path):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 6, generator=g)
    model = Quantised(weight)
    x = torch.rand(60, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = DataBundle(TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y), num_classes=3, in_shape=(6,),
                      bounds=(0.0, 1.0), class_names=["a", "b", "c"])
    eval_cfg = {"attacks": [{"name": "fgsm", "attack": "fgsm", "eps": 0.3},
                            {"name": "square", "attack": "square", "eps": 0.3, "n_queries": 200}],
                "subgroups": {}}
    out = final_evaluation(model, data, eval_cfg, 0, workdir=tmp_path, device=torch.device("cpu"), batch_size=32)
    checks = {f["check"] for f in out.checks}
    assert out.per_eval["fgsm"]["acc"] == 1.0                 # no gradient: FGSM cannot move anything
    assert out.per_eval["square"]["acc"] < 1.0                # ... the black-box attack can
    assert checks == {"zero_gradients", "black_box_beats_white_box.square"}


def test_shipped_evaluation_configs_validate(tmp_path):
    from pathlib import Path

    from distfair.config import load_config

    spaces = Path(__file__).resolve().parents[1] / "tune_spaces"
    suite = load_config(spaces / "digits_eval_suite.yaml")
    names = [e["name"] for e in suite["eval"]["attacks"]]
    assert names[0] == "autoattack" and suite["eval"]["attacks"][0]["eps"] == suite["attack"]["eps"]
    assert {e.get("target") for e in suite["eval"]["attacks"]} == {None, "every", 8}
    assert set(suite["eval"]["subgroups"]["loops"].values()) == {"yes", "no"}
    root = make_fake_faces(tmp_path / "faces", per_identity=10)   # 8/1/1 per identity at 80/10/10
    faces = load_config(spaces / "faces_roa.yaml", [f"dataset.root={root}"])
    assert faces["attack"]["name"] == "roa" and faces["eval"]["subgroups"] == {"gender": "metadata"}
    assert faces["eval"]["attacks"][0]["eps"] is None                  # physical: unbounded colours


def test_fixed_target_success_rate_and_every_target_rates_by_hand(tmp_path):
    from distfair.attacks import FGSM

    g = torch.Generator().manual_seed(1)
    model = nn.Linear(6, 3).eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 6, generator=g))
        model.bias.zero_()
    x = torch.rand(45, 6, generator=g)
    y = torch.arange(45) % 3                  # every class present, whatever the model predicts
    data = DataBundle(TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y), num_classes=3, in_shape=(6,),
                      bounds=(0.0, 1.0), class_names=["a", "b", "c"])
    eval_cfg = {"attacks": [{"name": "to_c", "attack": "fgsm", "eps": 0.4, "target": "c"},
                            {"name": "every", "attack": "fgsm", "eps": 0.4, "target": "every"}], "subgroups": {}}
    out = final_evaluation(model, data, eval_cfg, 0, workdir=tmp_path, device=torch.device("cpu"), batch_size=16)
    aimed = y != 2
    hit = model(FGSM(eps=0.4)(model, x[aimed], y[aimed], target=torch.full_like(y[aimed], 2))).argmax(1) == 2
    assert out.per_eval["to_c"]["target_success_rate"] == pytest.approx(hit.double().mean().item())
    # every target: rate[i][t] = share of class-i samples the attack aimed at t drove to t
    for i in range(3):
        for t in range(3):
            if i == t:                                   # undefined on the diagonal
                assert out.target_success["every"][i][t] is None
                continue
            xi = x[y == i]
            pred = model(FGSM(eps=0.4)(model, xi, y[y == i], target=torch.full((len(xi),), t))).argmax(1)
            assert out.target_success["every"][i][t] == pytest.approx((pred == t).double().mean().item())



def _register_failing_attack(monkeypatch):
    """A real attack that raises on any input, registered for the test only (``eval.attacks``
    entries are built from the registry)."""
    from distfair.attacks import ATTACKS, FGSM

    class Failing(FGSM):
        name = "failing"

        def _perturb(self, model, x, y, target, generator):
            raise RuntimeError("the attack blew up")

    monkeypatch.setitem(ATTACKS, "failing", Failing)


def test_a_failing_entry_and_an_empty_group_never_lose_the_evaluation(tmp_path, monkeypatch):
    """Issue 9 point 6: an evaluation entry whose attack raises, and a subgroup whose classes
    have no test sample (``ValueError: groups [1] have no class with samples``), used to abort
    the final evaluation after training. Now the failure is recorded, the group is reported
    absent, and every other entry, the self-checks and the flags still land."""
    _register_failing_attack(monkeypatch)
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(6, 4).eval()
    x = torch.rand(40, 6, generator=g)
    y = torch.arange(40) % 2                                  # classes 2 and 3 (group "y") absent
    data = DataBundle(TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y), num_classes=4, in_shape=(6,),
                      bounds=(0.0, 1.0), class_names=["a", "b", "c", "d"])
    eval_cfg = {"attacks": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1},
                            {"name": "boom", "attack": "failing", "eps": 0.1},
                            {"name": "aa", "attack": "autoattack", "eps": 0.1, "n_iter": 2, "n_target_classes": 1,
                             "n_queries": 5}],
                "subgroups": {"pair": {0: "x", 1: "x", 2: "y", 3: "y"}}}
    logged = []
    out = final_evaluation(model, data, eval_cfg, 0, workdir=tmp_path, device=torch.device("cpu"), batch_size=16,
                           log=logged.append)
    assert out.errors == {"boom": "RuntimeError: the attack blew up"}
    assert out.tags["distfair.eval_error.boom"] == "RuntimeError: the attack blew up"
    assert out.tags["distfair.autoattack_version.aa"] == "standard"
    assert out.per_eval["boom"] == {} and "boom" not in out.confusion
    for name in ("clean", "fgsm", "aa"):
        assert out.per_eval[name]["group_acc/pair/y"] is None and out.per_eval[name]["group_gap/pair"] is None
        assert out.per_eval[name]["group_acc/pair/x"] is not None
    assert any("groups ['y'] have no class with samples" in line for line in logged)
    assert any("'boom' failed" in line for line in logged)
    flags = np.load(out.flags_path)
    assert {"labels", "clean", "fgsm", "aa", "aa:square"} <= set(flags.files) and "boom" not in flags.files


def test_evaluation_failures_and_autoattack_version_reach_the_seed_run(tmp_path, monkeypatch, seed_figures):
    """The path of the self-check tags: ``run_seed`` -> ``SeedResult`` -> ``SeedRunLogger``:
    ``distfair.eval_error.<entry>`` and ``distfair.autoattack_version.<entry>`` tags on a
    FINISHED seed run, with the other entries' metrics and artifacts."""
    from mlflow.tracking import MlflowClient

    from distfair import tracking

    _register_failing_attack(monkeypatch)
    cfg = validate(synthetic_config([
        {"name": "boom", "attack": "failing"},
        {"name": "aa", "attack": "autoattack", "n_iter": 2, "n_target_classes": 1, "n_queries": 5},
    ]), "boom.yaml")
    cfg["train"]["epochs"] = 1
    result = run_seed(cfg, 0, workdir=tmp_path / "w")
    assert set(result.eval_errors) == {"boom"}
    assert "robust_acc" not in result.metrics and "aa/robust_acc" in result.metrics   # the primary failed
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    run_id = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    tracking.SeedRunLogger(uri, run_id).log_result(result.to_dict(), title="pgd_at, seed 0")
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["distfair.eval_error.boom"] == "RuntimeError: the attack blew up"
    assert run.data.tags["distfair.autoattack_version.aa"] == "standard"
    assert "aa/robust_acc" in run.data.metrics
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert {"robust_flags.npz", "confusion_matrices.json", "plots"} <= artifacts
