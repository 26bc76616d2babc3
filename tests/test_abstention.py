"""Predictions that may abstain (issue 10, part 3): one predict step per evaluation returning a
class or an abstention (-1) and a score per sample; metrics, plots, records and MLflow take
abstentions explicitly and never count one as class 0 (methods.md "Metrics").

The hand-built problem: K = 3 classes (a, b, c), 12 test samples, a fixed linear model whose
arg-max is the largest of the first three inputs, and a predictor that abstains where the
fourth input (the marker) is set. Three samples are abstained on; the arg-max would have
called two of them class 0, so folding abstentions into class 0 changes every number below.

    idx  true  arg-max  abstain      idx  true  arg-max  abstain      idx  true  arg-max
    0    0     0                     4    1     1                     8    2     2
    1    0     0                     5    1     0                     9    2     2
    2    0     1                     6    1     1        yes          10   2     1
    3    0     0        yes          7    1     0        yes          11   2     2

Confusion of the non-abstained samples [[2,1,0],[1,1,0],[0,1,3]], abstained per true class
[1,2,0], class totals [4,4,4].
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distfair.data import DataBundle
from distfair.evaluation import (ABSTAIN, ArgmaxPredictor, Predictor, confusion_counts, evaluation_metrics,
                                 final_evaluation, predict_dataset, resolve_groupings)
from distfair.metrics import fairness_metrics, group_metrics, max_bipartition_asym
from distfair.evaluation.seed_figures import seed_figures
from distfair.plotting import asymmetry_matrix, confusion_rates, target_shares

CPU = torch.device("cpu")
TRUE = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
ARGMAX = [0, 0, 1, 0, 1, 0, 1, 0, 2, 2, 1, 2]
ABSTAINED = {3, 6, 7}
PREDS = [ABSTAIN if i in ABSTAINED else p for i, p in enumerate(ARGMAX)]
COUNTS = [[2, 1, 0], [1, 1, 0], [0, 1, 3]]
ABST = [1, 2, 0]
VOICE = ["x" if i in {0, 1, 3, 6, 7} else "y" for i in range(12)]    # a per-sample attribute
GENDER = {"a": "F", "b": "M", "c": "F"}                                # a class-level attribute
# the max softmax probability of logits (2, 0, 0): the score of every sample
SCORE = math.exp(2) / (math.exp(2) + 2)


class AbstainOnMarker(Predictor):
    """Arg-max, but abstains where the last input is set (module level: picklable for spawn)."""
    can_abstain = True

    def __call__(self, model, x):
        logits = model(x)
        pred = logits.argmax(dim=1)
        score = logits.softmax(dim=1).max(dim=1).values
        return torch.where(x[:, -1] > 0.5, torch.full_like(pred, ABSTAIN), pred), score


def hand_problem():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
    x = torch.zeros(12, 4)
    x[torch.arange(12), torch.tensor(ARGMAX)] = 2.0
    x[sorted(ABSTAINED), 3] = 1.0
    return model.eval(), TensorDataset(x, torch.tensor(TRUE))


def hand_bundle() -> DataBundle:
    _, test = hand_problem()
    return DataBundle(train=test, val=test, test=test, num_classes=3, in_shape=(4,), bounds=(0.0, 2.0),
                      class_names=["a", "b", "c"], test_attributes={"voice": VOICE},
                      val_attributes={"voice": VOICE})


# ----------------------------------------------------------------- metrics against hand values
def test_fairness_metrics_count_abstentions_in_every_denominator_and_no_numerator():
    m = fairness_metrics(COUNTS, ABST)
    assert m["acc"] == pytest.approx(6 / 12)                             # not 6 / 9, not 8 / 12
    assert m["per_class_acc"] == pytest.approx([2 / 4, 1 / 4, 3 / 4])    # correct / class total
    assert m["rejection_rate"] == pytest.approx(3 / 12)
    assert m["per_class_rejection"] == pytest.approx([1 / 4, 2 / 4, 0.0])
    assert m["worst_class_acc"] == pytest.approx(0.25) and m["acc_gap"] == pytest.approx(0.5)
    # R = [[.5,.25,0],[.25,.25,0],[0,.25,.75]] (rows over class totals, abstentions in no column)
    assert m["max_asym_gap"] == pytest.approx(0.25)
    assert m["sym_loss"] == pytest.approx(0.25 / (0.25 + 1 / 3) * 0.25)
    assert m["tgt_max"] == pytest.approx(2 / 3) and m["tgt_min"] == pytest.approx(0.0)
    # folding the abstentions into class 0 (ART's all-zero row + arg-max) would give acc 8/12
    folded = np.array(COUNTS)
    folded[:, 0] += ABST
    assert fairness_metrics(folded)["acc"] != pytest.approx(m["acc"])


def test_without_abstentions_the_metric_set_is_unchanged():
    plain = fairness_metrics(COUNTS)
    assert "rejection_rate" not in plain and "per_class_rejection" not in plain
    zero = fairness_metrics(COUNTS, [0, 0, 0])
    assert zero["rejection_rate"] == 0.0
    assert {k: v for k, v in zero.items() if k not in ("rejection_rate", "per_class_rejection")} == plain


def test_a_class_with_only_abstentions_is_present_with_accuracy_zero():
    m = fairness_metrics([[3, 0], [0, 0]], [0, 2])
    assert m["per_class_acc"] == [1.0, 0.0] and m["per_class_rejection"] == [0.0, 1.0]
    assert m["acc"] == pytest.approx(3 / 5) and m["worst_class_acc"] == 0.0
    with pytest.raises(ValueError, match="length K"):
        fairness_metrics(COUNTS, [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        fairness_metrics(COUNTS, [1, -2, 0])


def test_subgroup_metrics_divide_by_class_totals_with_abstentions():
    g = group_metrics(COUNTS, [0, 1, 0], ["F", "M"], abstained=ABST)
    assert g["group_acc"] == pytest.approx({"F": (0.5 + 0.75) / 2, "M": 0.25})
    bip = max_bipartition_asym(COUNTS, abstained=ABST)
    # net outflows r_i of D = R - R^T: r = [0, -0.25, 0.25] -> best split {2} vs {0, 1}: 0.25 / 2
    assert bip["value"] == pytest.approx(0.125)


# ---------------------------------------------------------------- the predict step and records
def test_predict_dataset_keeps_abstentions_and_scores_per_sample():
    model, data = hand_problem()
    out = predict_dataset(model, data, 3, device=CPU, batch_size=5, predictor=AbstainOnMarker())
    assert out.preds.tolist() == PREDS and out.can_abstain
    assert out.scores.tolist() == pytest.approx([SCORE] * 12)
    assert out.counts(3).tolist() == COUNTS                   # column 0 holds no abstention
    assert out.abstained_counts(3).tolist() == ABST
    assert out.correct.tolist() == [p == t for p, t in zip(PREDS, TRUE)]
    default = predict_dataset(model, data, 3, device=CPU, batch_size=5)
    assert default.preds.tolist() == ARGMAX and not default.can_abstain
    assert default.counts(3).sum() == 12 and default.abstained_counts(3).sum() == 0
    assert torch.equal(default.scores, out.scores)


def test_confusion_counts_leave_abstentions_out_of_every_cell():
    model, data = hand_problem()
    counts = confusion_counts(model, data, 3, device=CPU, batch_size=5, predictor=AbstainOnMarker())
    assert counts.tolist() == COUNTS
    assert confusion_counts(model, data, 3, device=CPU, batch_size=5).tolist() == \
        confusion_counts(model, data, 3, device=CPU, batch_size=5, predictor=ArgmaxPredictor()).tolist()


def test_a_predictor_that_cannot_abstain_may_not_return_minus_one():
    class Liar(AbstainOnMarker):
        can_abstain = False

    model, data = hand_problem()
    with pytest.raises(ValueError, match="can_abstain False"):
        predict_dataset(model, data, 3, device=CPU, batch_size=12, predictor=Liar())


def test_evaluation_metrics_report_rejection_per_class_group_and_false_rejection():
    model, data = hand_problem()
    pred = predict_dataset(model, data, 3, device=CPU, batch_size=4, predictor=AbstainOnMarker())
    groupings = resolve_groupings({"gender": GENDER, "voice": "metadata"}, hand_bundle())
    one = evaluation_metrics(pred, 3, groupings, ["a", "b", "c"], None, clean=True)
    m = one.metrics
    assert m["acc"] == pytest.approx(0.5) and one.per_class_acc == pytest.approx([0.5, 0.25, 0.75])
    assert m["rejection_rate"] == pytest.approx(0.25) and m["false_rejection_rate"] == pytest.approx(0.25)
    assert one.abstained == ABST and one.per_class_rejection == pytest.approx([0.25, 0.5, 0.0])
    assert m["group_acc/gender/F"] == pytest.approx(0.625) and m["group_acc/gender/M"] == pytest.approx(0.25)
    assert m["group_rejection/gender/F"] == pytest.approx(1 / 8)          # 1 of the 8 samples of a, c
    assert m["group_rejection/gender/M"] == pytest.approx(2 / 4)
    assert m["group_acc/voice/x"] == pytest.approx(2 / 5) and m["group_acc/voice/y"] == pytest.approx(4 / 7)
    assert m["group_rejection/voice/x"] == pytest.approx(3 / 5) and m["group_rejection/voice/y"] == 0.0
    # an attacked evaluation has no false-rejection rate; a default predictor no rejection keys
    assert "false_rejection_rate" not in evaluation_metrics(pred, 3, [], ["a", "b", "c"], None).metrics
    plain = evaluation_metrics(predict_dataset(model, data, 3, device=CPU, batch_size=4), 3, groupings,
                               ["a", "b", "c"], None, clean=True)
    assert not any("rejection" in k for k in plain.metrics) and plain.abstained is None


def test_fixed_target_keeps_the_abstentions_of_the_target_class_out_of_its_rows():
    model, data = hand_problem()
    from distfair.attacks import FGSM

    pred = predict_dataset(model, data, 3, device=CPU, batch_size=4, attack=FGSM(eps=0.0 + 1e-6), target=1,
                           predictor=AbstainOnMarker())
    assert (pred.preds[sorted(ABSTAINED)] == ABSTAIN).all()        # the marker survives the tiny step
    with pytest.warns(UserWarning, match=r"classes \[1\] have no samples"):   # the usual absent target row
        one = evaluation_metrics(pred, 3, [], ["a", "b", "c"], 1)
    assert one.abstained[1] == 0 and one.counts[1].sum() == 0       # the target's row is left out
    assert one.metrics["rejection_rate"] == pytest.approx(pred.abstained.double().mean().item())
    every = predict_dataset(model, data, 3, device=CPU, batch_size=4, attack=FGSM(eps=1e-6), target="every",
                            predictor=AbstainOnMarker())
    assert every.preds.tolist() == PREDS                  # a tiny step moves no prediction; abstentions stay -1
    # successes: the three misclassified samples (2: 0->1, 5: 1->0, 10: 2->1); sample 7 (true 1,
    # arg-max 0, abstained) is no success toward class 0
    assert every.target_success.tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]


def _sharded_worker(rank, world, store_path, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        model, data = hand_problem()
        out = predict_dataset(model, data, 3, device=CPU, batch_size=2, rank=rank, world=world,
                              predictor=AbstainOnMarker())
        if rank == 0:
            torch.save(dataclasses.asdict(out), out_path)
    finally:
        dist.destroy_process_group()


def test_abstentions_survive_the_all_reduce_over_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    merged = torch.load(tmp_path / "out.pt")
    assert merged["preds"].tolist() == PREDS and merged["labels"].tolist() == TRUE
    assert merged["scores"].tolist() == pytest.approx([SCORE] * 12)


def test_final_evaluation_flags_confusion_and_plots_never_put_an_abstention_in_class_0(tmp_path):
    model, _ = hand_problem()
    cfg = {"attacks": [], "subgroups": {"gender": GENDER, "voice": "metadata"}}
    final = final_evaluation(model, hand_bundle(), cfg, 0, workdir=tmp_path, device=CPU, batch_size=5,
                             predictor=AbstainOnMarker())
    assert final.confusion["clean"] == COUNTS
    assert final.abstentions["clean"]["abstained"] == ABST
    assert final.per_class_acc["clean"] == pytest.approx([0.5, 0.25, 0.75])
    assert final.per_eval["clean"]["false_rejection_rate"] == pytest.approx(0.25)
    flags = np.load(final.flags_path)
    assert flags["preds/clean"].tolist() == PREDS
    assert flags["scores/clean"].tolist() == pytest.approx([SCORE] * 12)
    assert flags["clean"].tolist() == [p == t for p, t in zip(PREDS, TRUE)]
    # the plots' data: an "abstained" column, class 0's column untouched, rows over class totals
    rates = confusion_rates(COUNTS, ABST)
    assert rates.shape == (3, 4)
    assert rates[:, 0].tolist() == pytest.approx([2 / 4, 1 / 4, 0.0])
    assert rates[:, 3].tolist() == pytest.approx([1 / 4, 2 / 4, 0.0])
    assert rates.sum(axis=1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert np.nanmax(asymmetry_matrix(COUNTS, ABST)) == pytest.approx(0.25)
    assert target_shares(COUNTS, ABST).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    result = {"class_names": ["a", "b", "c"], "confusion": final.confusion, "per_class_acc": final.per_class_acc,
              "subgroups": final.subgroups, "abstentions": final.abstentions}
    names = {p.name for p in seed_figures(result, "toy", tmp_path)}
    assert {"confusion_clean.png", "per_class_acc.png", "per_class_rejection.png"} <= names


# ---------------------------------------------------------- run_seed -> SeedRunLogger -> MLflow
def test_run_seed_to_mlflow_records_abstentions_explicitly(tmp_path, monkeypatch, seed_figures):
    """A defense whose predictor abstains on the test samples with x_0 > 0.5, through
    ``run_seed`` and ``SeedRunLogger`` on a SQLite store: the MLflow metrics and JSON artifacts
    equal values counted by hand from the data and the per-sample predictions."""
    from mlflow.tracking import MlflowClient

    from distfair import tracking
    from distfair.config import validate
    from distfair.data import build_dataset
    from distfair.defenses import DEFENSES
    from distfair.defenses.standard import Standard
    from distfair.engine import run_seed

    class Threshold(Predictor):
        can_abstain = True

        def __call__(self, model, x):
            pred, score = ArgmaxPredictor()(model, x)
            return torch.where(x[:, 0] > 0.5, torch.full_like(pred, ABSTAIN), pred), score

    class Rejecting(Standard):
        name = "rejecting_toy"

        def predictor(self):
            return Threshold()

    monkeypatch.setitem(DEFENSES, Rejecting.name, Rejecting)
    cfg = validate({
        "defense": {"name": "rejecting_toy"},
        "dataset": {"name": "synthetic", "num_samples": 120, "num_classes": 3, "dim": 4},
        "model": {"name": "mlp", "hidden": 8},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "eval": {"attacks": [{"name": "fgsm", "attack": "fgsm", "eps": 0.05}],
                 "subgroups": {"pair": {0: "A", 1: "A", 2: "B"}}},
        "seeds": [0],
    }, "rejecting.yaml")
    result = run_seed(cfg, 0, workdir=tmp_path / "w")
    data = build_dataset("synthetic", **{k: v for k, v in cfg["dataset"].items() if k != "name"})
    x, y = (torch.stack([data.test[i][j] for i in range(len(data.test))]) for j in (0, 1))
    rejected = (x[:, 0] > 0.5).numpy()
    labels = y.numpy()
    assert 0 < rejected.sum() < len(labels)                              # the check is not vacuous
    flags = np.load(result.flags_path)
    assert np.array_equal(flags["labels"], labels)
    preds = flags["preds/clean"]
    assert np.array_equal(preds == ABSTAIN, rejected)                    # exactly the marked samples
    correct = preds == labels
    hand = {
        "clean_acc": correct.mean(),
        "clean_rejection_rate": rejected.mean(),
        "clean_false_rejection_rate": rejected.mean(),
        "clean_group_rejection/pair/A": rejected[labels <= 1].mean(),
        "clean_group_rejection/pair/B": rejected[labels == 2].mean(),
        "rejection_rate": (flags["preds/fgsm"] == ABSTAIN).mean(),
    }
    per_class_acc = [correct[labels == c].mean() for c in range(3)]
    per_class_rejection = [rejected[labels == c].mean() for c in range(3)]
    abstained = [int(rejected[labels == c].sum()) for c in range(3)]
    confusion = np.zeros((3, 3), dtype=int)
    for t, p in zip(labels[~rejected], preds[~rejected]):
        confusion[t, p] += 1
    m = result.metrics
    for key, value in hand.items():
        assert m[key] == pytest.approx(value), key
    assert "false_rejection_rate" not in m                               # only on clean data
    assert "val_clean_rejection_rate" in m and "val_rejection_rate" in m
    # every epoch's validation accuracy counts abstentions as not correct (divides by len(val))
    val_x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    assert result.history[0]["val_clean_acc"] <= 1 - (val_x[:, 0] > 0.5).double().mean().item() + 1e-12

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    run_id = tracking.get_or_create_seed_run(uri, exp, parent, 0)
    tracking.SeedRunLogger(uri, run_id).log_result(result.to_dict(), title="rejecting_toy, seed 0")
    client = MlflowClient(uri)
    logged = client.get_run(run_id).data.metrics
    for key, value in hand.items():
        assert logged[key] == pytest.approx(value), key
    down = tmp_path / "down"
    down.mkdir()
    matrices = json.loads(open(client.download_artifacts(run_id, "confusion_matrices.json", str(down))).read())
    assert matrices["matrices"]["clean"] == confusion.tolist()           # column 0: no abstention
    assert matrices["abstained"]["clean"] == abstained
    per_class = json.loads(open(client.download_artifacts(run_id, "per_class_acc.json", str(down))).read())
    assert per_class["per_class_acc"]["clean"] == pytest.approx(per_class_acc)
    assert per_class["per_class_rejection"]["clean"] == pytest.approx(per_class_rejection)
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/per_class_rejection.png" in plots
