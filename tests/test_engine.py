"""The plain-PyTorch engine: determinism per seed, exact resume, metric naming, checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch

from distfair.config import validate
from distfair.engine import metric_record, run_seed
from distfair.seeding import derive_seed
from distfair.engine.train import CHECKPOINT_NAME


@pytest.fixture
def cfg(tiny_cfg_dict):
    return validate(tiny_cfg_dict, "tiny.yaml")


def test_same_seed_same_metrics(cfg, tmp_path):
    a = run_seed(cfg, 3, workdir=tmp_path / "a")
    b = run_seed(cfg, 3, workdir=tmp_path / "b")
    assert a.metrics.keys() == b.metrics.keys()
    for k in a.metrics:
        if not k.endswith("time_s"):
            assert a.metrics[k] == b.metrics[k], k
    assert a.confusion == b.confusion
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_different_seeds_differ(cfg, tmp_path):
    a = run_seed(cfg, 0, workdir=tmp_path / "a")
    b = run_seed(cfg, 1, workdir=tmp_path / "b")
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in b.history]


def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(cfg, tmp_path):
    cfg3 = copy.deepcopy(cfg)
    cfg3["train"]["epochs"] = 3
    straight = run_seed(cfg3, 5, workdir=tmp_path / "straight")

    cfg1 = copy.deepcopy(cfg)
    cfg1["train"]["epochs"] = 1
    run_seed(cfg1, 5, workdir=tmp_path / "resumed")            # "crash" after epoch 1
    seen = []
    resumed = run_seed(cfg3, 5, workdir=tmp_path / "resumed", on_epoch=lambda e, row, p: seen.append(e))
    assert seen == [1, 2]                                       # epoch 0 was not redone
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.confusion == straight.confusion
    assert resumed.metrics["robust_acc"] == straight.metrics["robust_acc"]


def test_checkpoint_holds_everything_needed_to_resume(cfg, tmp_path):
    paths = []
    run_seed(cfg, 0, workdir=tmp_path, on_epoch=lambda e, row, p: paths.append(p))
    assert paths == [tmp_path / CHECKPOINT_NAME] * cfg["train"]["epochs"]
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "seed", "history"} <= state.keys()
    assert state["epoch"] == cfg["train"]["epochs"] - 1 and state["seed"] == 0
    assert {"python", "numpy", "torch"} <= state["rng"].keys()


def test_checkpoint_of_another_seed_is_refused(cfg, tmp_path):
    run_seed(cfg, 0, workdir=tmp_path)
    with pytest.raises(RuntimeError, match="seed 0, not 1"):
        run_seed(cfg, 1, workdir=tmp_path)


def test_result_has_every_metric_family(cfg, tmp_path):
    r = run_seed(cfg, 0, workdir=tmp_path)
    keys = ("acc", "worst_class_acc", "acc_gap", "nsd", "worst10_acc", "max_asym_gap", "sym_loss")
    for k in keys:
        assert f"clean_{k}" in r.metrics
        assert f"fgsm/{'robust_acc' if k == 'acc' else k}" in r.metrics
    assert r.metrics["robust_acc"] == r.metrics["pgd5/robust_acc"]      # primary = first attack
    assert r.metrics["robust_acc"] <= r.metrics["clean_acc"] + 1e-12
    assert set(r.confusion) == {"clean", "pgd5", "fgsm"}
    n_test = sum(map(sum, r.confusion["clean"]))
    assert all(sum(map(sum, m)) == n_test for m in r.confusion.values())
    assert len(r.param_fingerprints) == 1


def test_result_carries_the_structured_sources_of_its_metrics(cfg, tmp_path):
    """What the result record is built from (distfair.results.record): the resolved configuration, the
    test evaluations' and the validation pass's metric dicts and the timings; the flat MLflow
    metrics are exactly those dicts renamed."""
    from distfair.engine.train import validation_record

    r = run_seed(cfg, 0, workdir=tmp_path)
    assert r.config == cfg and set(r.per_eval) == {"clean", "pgd5", "fgsm"} and set(r.val_per_eval) == {"clean", "pgd5"}
    expected = metric_record(r.per_eval["clean"], [(n, r.per_eval[n]) for n in ("pgd5", "fgsm")])
    expected.update(validation_record(r.val_per_eval, "pgd5"))
    expected.update(r.timings)
    assert r.metrics == expected
    assert set(r.timings) == {"train_time_s", "val_time_s", "eval_time_s"}


def test_metric_record_naming():
    clean = {"acc": 0.9, "worst_class_acc": 0.8, "per_class_acc": [0.8, 1.0]}
    pgd = {"acc": 0.5, "worst_class_acc": 0.3, "per_class_acc": [0.3, 0.7]}
    fgsm = {"acc": 0.6, "worst_class_acc": 0.4, "per_class_acc": [0.4, 0.8]}
    assert metric_record(clean, [("pgd20", pgd), ("fgsm", fgsm)]) == {
        "clean_acc": 0.9, "clean_worst_class_acc": 0.8,
        "robust_acc": 0.5, "worst_class_acc": 0.3,
        "pgd20/robust_acc": 0.5, "pgd20/worst_class_acc": 0.3,
        "fgsm/robust_acc": 0.6, "fgsm/worst_class_acc": 0.4,
    }


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "train-attack", 1, 0) == derive_seed(0, "train-attack", 1, 0)
    assert derive_seed(0, "train-attack", 1, 0) != derive_seed(0, "train-attack", 1, 1)
    assert derive_seed(0, "a") != derive_seed(1, "a")
    assert 0 <= derive_seed(123, "x") < 2**63


def test_validation_pass_reports_the_full_metric_set_on_the_validation_split(cfg, tmp_path):
    """Selection metrics (issue "Honest numbers" §1): the final validation pass gives every test
    metric again, clean and under the primary evaluation attack, computed on data.val."""
    from distfair.data import build_dataset
    from distfair.metrics import confusion_matrix, fairness_metrics
    from distfair.models import build_model

    result = run_seed(cfg, 0, workdir=tmp_path)
    m = result.metrics
    for name in ("acc", "worst_class_acc", "acc_gap", "nsd", "sym_loss", "max_asym_gap", "max_bipartition_asym"):
        clean = "clean_acc" if name == "acc" else f"clean_{name}"
        attacked = "robust_acc" if name == "acc" else name
        assert f"val_{clean}" in m and f"val_{attacked}" in m and clean in m and attacked in m, name
    primary = cfg["eval"]["attacks"][0]["name"]
    assert not any(k.startswith(f"val_{primary}/") for k in m)          # the primary is bare, as on test
    assert m["val_clean_acc"] == pytest.approx(result.history[-1]["val_clean_acc"])   # same model, same split

    # recomputed by hand from the final checkpoint on the validation split (clean)
    data = build_dataset(cfg["dataset"]["name"], **{k: v for k, v in cfg["dataset"].items() if k != "name"})
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes, in_shape=data.in_shape,
                        **{k: v for k, v in cfg["model"].items() if k != "name"})
    model.load_state_dict(torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["model"])
    model.eval()
    x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    y = torch.tensor([int(data.val[i][1]) for i in range(len(data.val))])
    with torch.no_grad():
        expected = fairness_metrics(confusion_matrix(y, model(x).argmax(1), data.num_classes))
    assert m["val_clean_worst_class_acc"] == pytest.approx(expected["worst_class_acc"])
    assert m["val_clean_acc_gap"] == pytest.approx(expected["acc_gap"])
    assert m["val_robust_acc"] <= m["val_clean_acc"] + 1e-12


def test_non_finite_training_loss_names_seed_and_epoch(cfg, tmp_path):
    cfg = copy.deepcopy(cfg)
    cfg["train"]["lr"] = 1e12                                   # diverges within the first epochs
    cfg["train"]["epochs"] = 5
    with pytest.raises(FloatingPointError, match=r"^loss is (nan|inf|-inf) at epoch \d, batch \d+$") as err:
        run_seed(cfg, 2, workdir=tmp_path)
    assert type(err.value).__name__ == "Diverged"      # distfair.engine.train.Diverged (1-based epoch, batch)
