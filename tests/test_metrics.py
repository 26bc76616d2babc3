"""Tests of distfair.metrics against hand-computed values (Sy-FAR §4.2, §5; methods.md)."""

import math

import numpy as np
import pytest
import torch

from distfair.metrics import (aggregate_seed_metrics, confusion_matrix, fairness_metrics,
                              soft_confusion_matrix, summarize, symmetry_loss)

KEYS = {"acc", "worst_class_acc", "acc_gap", "nsd", "worst10_acc", "max_asym_gap",
        "sym_loss", "tgt_max", "tgt_min", "tgt_std", "per_class_acc"}
# 3x3 with unequal row sums (10, 4, 20): R = [[.8,.2,0],[.25,.5,.25],[.15,.15,.7]]
UNEQUAL = [[8, 2, 0], [1, 2, 1], [3, 3, 14]]
# class 1 absent: R = [[.6,.2,.2],[0,0,0],[.25,.25,.5]]
ABSENT = [[6, 2, 2], [0, 0, 0], [1, 1, 2]]


def check(result, expected):
    assert set(result) == KEYS
    for key, value in expected.items():
        got = result[key]
        if value is None:
            assert got is None, key
        elif key == "per_class_acc":
            assert len(got) == len(value)
            for g, v in zip(got, value):
                assert (g is None) if v is None else g == pytest.approx(v, abs=1e-12), key
        else:
            assert type(got) is float, key
            assert got == pytest.approx(value, abs=1e-12), key
    assert set(expected) == KEYS


def test_sy_far_fig2_asymmetric():
    check(fairness_metrics([[8, 2], [6, 4]]), {
        "acc": 0.6,  # (8 + 4) / 20
        "per_class_acc": [0.8, 0.4], "worst_class_acc": 0.4, "acc_gap": 0.4,  # 0.8 - 0.4
        "nsd": 1 / 3,  # std(0.8, 0.4) = 0.2, mean 0.6
        "worst10_acc": 0.4,  # ceil(2/10) = 1 class
        "max_asym_gap": 0.4,  # |0.2 - 0.6|
        "sym_loss": 0.24615384615384614,  # 0.4 / (0.8 + 1/2) * 0.8 = 0.32 / 1.3
        "tgt_max": 0.75,  # column 0 off-diag 0.6 of total 0.8
        "tgt_min": 0.25,  # column 1: 0.2 / 0.8
        "tgt_std": 0.25})  # std(0.75, 0.25)


def test_sy_far_fig2_symmetric():
    check(fairness_metrics([[6, 4], [4, 6]]), {
        "acc": 0.6, "per_class_acc": [0.6, 0.6], "worst_class_acc": 0.6, "acc_gap": 0.0,
        "nsd": 0.0, "worst10_acc": 0.6, "max_asym_gap": 0.0, "sym_loss": 0.0,
        "tgt_max": 0.5, "tgt_min": 0.5, "tgt_std": 0.0})  # 0.4 / 0.8 each


def test_unequal_row_sums_use_row_normalisation():
    check(fairness_metrics(UNEQUAL), {
        "acc": 12 / 17,  # (8 + 2 + 14) / 34, differs from mean per-class acc 2/3
        "per_class_acc": [0.8, 0.5, 0.7], "worst_class_acc": 0.5, "acc_gap": 0.3,  # .8 - .5
        # deviations from 2/3 in 30ths: 4, -5, 1 -> var 42/900/3 -> std sqrt(14)/30
        "nsd": 0.18708286933869706,  # (sqrt(14)/30) / (2/3) = sqrt(14)/20
        "worst10_acc": 0.5,
        "max_asym_gap": 0.15,  # pairs: |.2-.25|=.05, |0-.15|=.15, |.25-.15|=.10
        # eps=1/3: .0225/(47/60) + .0225/(29/60) + .04/(44/60) = 1.35/47 + 1.35/29 + 2.4/44
        "sym_loss": 0.12982058293870474,
        # off-diag column sums .40, .35, .25, total 1.0
        "tgt_max": 0.4, "tgt_min": 0.25,
        "tgt_std": 0.06236095644623236})  # deviations in 60ths 4, 1, -5 -> sqrt(14)/60


def test_absent_class_is_left_out_with_warning():
    with pytest.warns(UserWarning, match=r"\[1\]"):
        result = fairness_metrics(ABSENT)
    check(result, {
        "acc": 4 / 7,  # (6 + 2) / 14
        "per_class_acc": [0.6, None, 0.5], "worst_class_acc": 0.5, "acc_gap": 0.1,
        "nsd": 1 / 11,  # std 0.05 / mean 0.55
        "worst10_acc": 0.5,  # P = 2 present -> ceil(2/10) = 1
        "max_asym_gap": 0.05,  # only pair (0,2): |.2 - .25|; (0,1) would give .2
        "sym_loss": 1.35 / 47,  # .05 / (.45 + 1/3) * .45, eps = 1/K with K = 3
        # columns: 0 -> .25, 1 -> .2 + .25 = .45 (absent class is still a target), 2 -> .2
        "tgt_max": 0.5,  # .45 / .9
        "tgt_min": 2 / 9,  # .2 / .9
        "tgt_std": 0.1200137166371826})  # deviations in 18ths -1, 3, -2 -> sqrt(14/972)


def test_perfect_classifier():
    check(fairness_metrics(np.diag([5, 3, 7])), {  # no errors: target shares undefined
        "acc": 1.0, "per_class_acc": [1.0, 1.0, 1.0], "worst_class_acc": 1.0, "acc_gap": 0.0,
        "nsd": 0.0, "worst10_acc": 1.0, "max_asym_gap": 0.0, "sym_loss": 0.0,
        "tgt_max": None, "tgt_min": None, "tgt_std": None})


def test_twelve_classes_worst10_uses_two_classes():
    counts = np.diag([10.0] * 12)
    counts[0, 0], counts[0, 2] = 2, 8  # class 0: acc 0.2, errors into class 2
    counts[1, 1], counts[1, 3] = 4, 6  # class 1: acc 0.4, errors into class 3
    check(fairness_metrics(counts), {
        "acc": 106 / 120,  # (2 + 4 + 10 * 10) / 120
        "per_class_acc": [0.2, 0.4] + [1.0] * 10, "worst_class_acc": 0.2, "acc_gap": 0.8,
        "worst10_acc": 0.3,  # ceil(12/10) = 2 -> (0.2 + 0.4) / 2
        # mean 10.6/12; var = 10.2/12 - (10.6/12)^2 = 0.0697222 -> std 0.2640497
        "nsd": 0.29892414184443133,
        "max_asym_gap": 0.8,  # R[0,2] = 0.8, R[2,0] = 0
        "sym_loss": 1.2513575701794752,  # .64 / (.8 + 1/12) + .36 / (.6 + 1/12)
        "tgt_max": 4 / 7, "tgt_min": 0.0,  # 0.8 / 1.4; ten columns receive nothing
        "tgt_std": 0.1886068990208912})  # sqrt((16/49 + 9/49)/12 - (1/12)^2)


def test_all_wrong_gives_undefined_nsd():
    check(fairness_metrics([[0, 4, 0], [0, 0, 2], [3, 0, 0]]), {
        "acc": 0.0, "per_class_acc": [0.0, 0.0, 0.0], "worst_class_acc": 0.0,
        "acc_gap": 0.0, "nsd": None, "worst10_acc": 0.0,
        "max_asym_gap": 1.0,  # R is a cyclic permutation: every pair has |1 - 0|
        "sym_loss": 2.25,  # 3 pairs * 1 / (1 + 1/3) * 1
        "tgt_max": 1 / 3, "tgt_min": 1 / 3, "tgt_std": 0.0})


def test_accepts_torch_and_non_integer_counts():
    from_torch = fairness_metrics(torch.tensor([[8, 2], [6, 4]]))
    from_floats = fairness_metrics(np.array([[0.8, 0.2], [0.6, 0.4]]))
    for key in KEYS - {"per_class_acc"}:
        assert from_torch[key] == pytest.approx(from_floats[key], abs=1e-12), key
    assert from_torch["per_class_acc"] == pytest.approx([0.8, 0.4])
    assert from_torch["sym_loss"] == pytest.approx(0.24615384615384614)


@pytest.mark.parametrize("counts, message", [
    ([[1, 2, 3]], "square"),
    (np.ones((2, 2, 2)), "square"), ([[5]], "at least 2"),
    ([[1, -1], [0, 1]], ">= 0"),
    ([[1, float("nan")], [0, 1]], "finite"), ([[1, float("inf")], [0, 1]], "finite"),
    ([[0, 0], [0, 0]], "total count is 0"),
    ([[1, 2], [3]], "numeric"),
])
def test_invalid_counts_raise(counts, message):
    with pytest.raises(ValueError, match=message):
        fairness_metrics(counts)


def test_symmetry_loss_zero_on_symmetric_matrix():
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    loss = symmetry_loss(a + a.T)  # exactly symmetric: a_ij + a_ji == a_ji + a_ij
    assert loss.dim() == 0 and loss.item() == 0.0


def test_symmetry_loss_hand_values():
    c2 = torch.tensor([[0.8, 0.2], [0.6, 0.4]], dtype=torch.float64)
    assert symmetry_loss(c2).item() == pytest.approx(0.24615384615384614)  # .32 / 1.3
    assert symmetry_loss(c2, eps=0.1).item() == pytest.approx(0.35555555555555557)  # .32/.9
    c3 = torch.tensor(UNEQUAL, dtype=torch.float64)
    c3 = c3 / c3.sum(dim=1, keepdim=True)
    # 1.35/47 + 1.35/29 + 2.4/44 (see test_unequal_row_sums_use_row_normalisation)
    assert symmetry_loss(c3).item() == pytest.approx(0.12982058293870474)


@pytest.mark.parametrize("c", [
    torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), dim=1),
    torch.full((2, 2), 0.5),  # a = b everywhere: |a - b| is not differentiable there
    torch.zeros(3, 3),
])
def test_symmetry_loss_gradients_are_finite(c):
    c = c.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(symmetry_loss(c), c)
    assert torch.isfinite(grad).all()


def test_symmetry_loss_gradient_flows_through_softmax():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = symmetry_loss(soft_confusion_matrix(torch.softmax(logits, 1), labels, 3))
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_symmetry_loss_ignores_absent_rows():
    c = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    c[2] = 0.0  # class 2 missing from the batch; column 2 still receives mass
    sub = c[[0, 1, 3]][:, [0, 1, 3]]
    assert symmetry_loss(c).item() == pytest.approx(symmetry_loss(sub, eps=0.25).item())
    assert symmetry_loss(c).item() > 0


def test_symmetry_loss_matches_fairness_metrics():
    for counts in (UNEQUAL, [[8, 2], [6, 4]]):
        r = torch.tensor(counts, dtype=torch.float64)
        r = r / r.sum(dim=1, keepdim=True)
        assert symmetry_loss(r).item() == pytest.approx(fairness_metrics(counts)["sym_loss"])
    r = torch.tensor([[0.6, 0.2, 0.2], [0, 0, 0], [0.25, 0.25, 0.5]], dtype=torch.float64)
    with pytest.warns(UserWarning):
        expected = fairness_metrics(ABSENT)["sym_loss"]
    assert symmetry_loss(r).item() == pytest.approx(expected)


def test_symmetry_loss_invalid():
    with pytest.raises(ValueError, match="square"):
        symmetry_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps"):
        symmetry_loss(torch.zeros(2, 2), eps=0.0)


def test_soft_confusion_matrix_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2],  # labels 0, 0
                          [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]],  # labels 2, 2
                         dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 2, 2])
    c = soft_confusion_matrix(probs, labels, 3)
    # row 0 = mean of probs rows 0, 1; class 1 absent -> zeros; row 2 = mean of rows 2, 3
    expected = torch.tensor([[0.6, 0.25, 0.15], [0.0, 0.0, 0.0], [0.15, 0.4, 0.45]],
                            dtype=torch.float64)
    torch.testing.assert_close(c, expected)
    weights = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    (grad,) = torch.autograd.grad((c * weights).sum(), probs)
    # d C[y_b, :] / d probs[b] = 1 / n_{y_b}: grad = weights[label] / 2
    expected_grad = torch.tensor([[0, 0.5, 1], [0, 0.5, 1], [3, 3.5, 4], [3, 3.5, 4]],
                                 dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad)


def test_soft_confusion_matrix_invalid():
    probs = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="probs"):
        soft_confusion_matrix(probs, torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="labels"):
        soft_confusion_matrix(probs, torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="labels"):
        soft_confusion_matrix(probs, torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="labels"):
        soft_confusion_matrix(probs, torch.tensor([0.0, 1.0]), 3)


def test_confusion_matrix_small_example():
    c = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert c.dtype == torch.long
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert confusion_matrix(torch.tensor([], dtype=torch.long),
                            torch.tensor([], dtype=torch.long), 2).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("y_true, y_pred, message", [
    ([0, 3], [0, 1], "y_true.*got 3"),
    ([0, 1], [-1, 1], "y_pred.*got -1"),
    ([0, 1], [0], "same length"),
    ([0.0, 1.0], [0, 1], "integer"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_confusion_matrix_invalid(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(torch.tensor(y_true), torch.tensor(y_pred), 3)


def test_summarize_hand_values():
    s = summarize([1, 2, 3, 4])
    assert s["n"] == 4 and s["values"] == [1.0, 2.0, 3.0, 4.0]
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # (2.25 + .25 + .25 + 2.25) / 3
    assert (s["min"], s["max"]) == (1.0, 4.0)
    # half width = t_{0.975,3} * std / sqrt(4) = 3.182446305284263 * 1.2909944 / 2 = 2.0542603
    assert s["ci95_low"] == pytest.approx(2.5 - 2.054260256760879)
    assert s["ci95_high"] == pytest.approx(2.5 + 2.054260256760879)


def test_summarize_small_and_missing():
    one = summarize([0.7])
    assert one["n"] == 1 and one["mean"] == one["min"] == one["max"] == 0.7
    assert one["std"] is None and one["ci95_low"] is None and one["ci95_high"] is None
    two = summarize([None, 1, None, 3])
    assert two["n"] == 2 and two["values"] == [1.0, 3.0]
    assert two["std"] == pytest.approx(math.sqrt(2))
    # t_{0.975,1} = 12.706204736174707; half width = 12.7062 * sqrt(2) / sqrt(2)
    assert two["ci95_low"] == pytest.approx(2 - 12.706204736174707)
    empty = summarize([None])
    assert empty == {"mean": None, "std": None, "min": None, "max": None,
                     "ci95_low": None, "ci95_high": None, "n": 0, "values": []}
    assert summarize([]) == empty
    with pytest.raises(ValueError, match=r"values\[1\]"):
        summarize([1.0, float("nan")])


def test_aggregate_seed_metrics():
    out = aggregate_seed_metrics([
        {"acc": 0.5, "nsd": 0.1, "per_class_acc": [0.5, None], "tgt_std": None},
        {"acc": 0.7, "nsd": None, "tgt_std": None},  # nsd None, tgt_max missing
        {"acc": 0.6, "tgt_max": 0.4, "tgt_std": None}])
    assert list(out) == ["acc", "nsd", "tgt_max", "tgt_std"]
    assert out["acc"]["n"] == 3 and out["acc"]["mean"] == pytest.approx(0.6)
    assert out["acc"]["std"] == pytest.approx(0.1)  # (.01 + .01 + 0) / 2 = .01
    assert out["nsd"]["n"] == 1 and out["nsd"]["mean"] == 0.1 and out["nsd"]["std"] is None
    assert out["tgt_max"]["values"] == [0.4]
    assert out["tgt_std"]["n"] == 0 and out["tgt_std"]["mean"] is None
    with pytest.raises(TypeError):
        aggregate_seed_metrics([{"acc": 1.0}, [("acc", 1.0)]])
