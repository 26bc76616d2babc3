"""Tests of the subgroup metrics (Sy-FAR §7, Def. 1-2, Thm. 1) against hand-computed values."""

import itertools

import numpy as np
import pytest
import torch

from distfair.metrics import (fairness_metrics, group_metrics, max_bipartition_asym,
                              subgroup_matrix)

# row sums 10, 4, 10, 5 -> R = [[.6,.2,.1,.1], [.25,.75,0,0], [0,.2,.6,.2], [.2,.2,.2,.4]]
FOUR = [[6, 2, 1, 1], [1, 3, 0, 0], [0, 2, 6, 2], [1, 1, 1, 2]]
# FOUR with class 3 absent: present {0,1,2}, group 1 = {2} only
FOUR_ABSENT = [[6, 2, 1, 1], [1, 3, 0, 0], [0, 2, 6, 2], [0, 0, 0, 0]]
# cyclic confusion 0->1->2->0: not symmetric, yet every class has net outflow 0
CYCLIC = [[8, 2, 0], [0, 8, 2], [2, 0, 8]]


def rates(counts):
    counts = np.asarray(counts, dtype=float)
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)


def brute_force(counts):
    """Max |C_AB - C_BA| over all bipartitions, straight from Def. 1 (itertools)."""
    r = rates(counts)
    present = [i for i in range(len(r)) if r[i].sum() > 0]
    best = 0.0
    for size in range(1, len(present)):
        for side_a in itertools.combinations(present, size):
            side_b = [j for j in present if j not in side_a]
            ab = sum(r[i, j] for i in side_a for j in side_b) / (len(side_a) * len(side_b))
            ba = sum(r[j, i] for i in side_a for j in side_b) / (len(side_a) * len(side_b))
            best = max(best, abs(ab - ba))
    return best


def bipartition_asym(counts, side_a):
    k = len(counts)
    c_hat = subgroup_matrix(counts, [0 if i in side_a else 1 for i in range(k)])
    return c_hat[0, 1] - c_hat[1, 0]


def symmetric_counts(rng, k):
    """Symmetric off-diagonal, diagonal completed so every row sums to the same total."""
    off = rng.random((k, k)) * rng.integers(0, 2, (k, k))  # some exact zeros too
    off = np.triu(off, 1)
    off = off + off.T
    total = off.sum(axis=1).max() + rng.random()
    return off + np.diag(total - off.sum(axis=1))


def random_groups(rng, k):
    while True:
        labels = np.unique(rng.integers(0, rng.integers(2, k + 1), k), return_inverse=True)[1]
        if labels.max() >= 1:
            return labels.ravel()


def test_subgroup_matrix_hand_computed():
    c_hat = subgroup_matrix(FOUR, [0, 0, 1, 1])
    assert isinstance(c_hat, np.ndarray) and c_hat.shape == (2, 2)
    np.testing.assert_allclose(c_hat, [
        [0.45, 0.05],  # (.6+.2+.25+.75)/4 ; (.1+.1+0+0)/4
        [0.15, 0.35],  # (0+.2+.2+.2)/4    ; (.6+.2+.2+.4)/4
    ], atol=1e-12)


def test_group_metrics_hand_computed():
    result = group_metrics(FOUR, [0, 0, 1, 1], names=["a", "b"])
    assert set(result) == {"group_acc", "group_gap", "group_asym", "max_group_asym", "matrix"}
    assert result["group_acc"] == pytest.approx({"a": 0.675, "b": 0.5})  # (.6+.75)/2, (.6+.4)/2
    assert result["group_acc"]["a"] != pytest.approx(result["matrix"][0][0])  # .675 vs .45
    assert result["group_gap"] == pytest.approx(0.175)  # .675 - .5
    assert result["group_asym"] == pytest.approx({"a|b": 0.1})  # |.05 - .15|
    assert result["max_group_asym"] == pytest.approx(0.1)
    assert type(result["group_gap"]) is float and type(result["max_group_asym"]) is float
    np.testing.assert_allclose(result["matrix"], [[0.45, 0.05], [0.15, 0.35]], atol=1e-12)


def test_group_metrics_three_groups_default_names():
    # groups {0}, {1,2}, {3}: C_01 = (.2+.1)/2 = .15, C_10 = (.25+0)/2 = .125 -> .025
    # C_02 = .1, C_20 = .2 -> .1 ; C_12 = (0+.2)/2 = .1, C_21 = (.2+.2)/2 = .2 -> .1
    result = group_metrics(FOUR, [0, 1, 1, 2])
    assert result["group_acc"] == pytest.approx({"0": 0.6, "1": 0.675, "2": 0.4})
    assert result["group_gap"] == pytest.approx(0.275)  # .675 - .4
    assert result["group_asym"] == pytest.approx({"0|1": 0.025, "0|2": 0.1, "1|2": 0.1})
    assert result["max_group_asym"] == pytest.approx(0.1)


def test_absent_class_left_out_of_sums_and_sizes():
    with pytest.warns(UserWarning, match=r"\[3\]"):
        c_hat = subgroup_matrix(FOUR_ABSENT, [0, 0, 1, 1])
    np.testing.assert_allclose(c_hat, [
        [0.45, 0.05],  # (.6+.2+.25+.75)/4 ; (R_02+R_12)/(2*1) = (.1+0)/2, R_03 left out
        [0.10, 0.60],  # (R_20+R_21)/(1*2) = (0+.2)/2 ; R_22
    ], atol=1e-12)
    with pytest.warns(UserWarning, match=r"\[3\]"):
        result = group_metrics(FOUR_ABSENT, [0, 0, 1, 1])
    assert result["group_acc"] == pytest.approx({"0": 0.675, "1": 0.6})
    assert result["group_gap"] == pytest.approx(0.075)
    assert result["group_asym"] == pytest.approx({"0|1": 0.05})  # |.05 - .1|


def test_group_with_only_absent_classes_raises():
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"groups \[1\]"):
        subgroup_matrix(FOUR_ABSENT, [0, 0, 0, 1])


def test_group_with_only_absent_classes_can_be_omitted():
    """``empty="omit"`` (what the evaluation uses, issue 9 point 6): the group is left out like
    an absent class, with a warning, instead of raising."""
    with pytest.warns(UserWarning) as caught:
        result = group_metrics(FOUR_ABSENT, [0, 0, 0, 1], names=["a", "b"], empty="omit")
    messages = [str(w.message) for w in caught]
    assert any("groups ['b'] have no class with samples" in m for m in messages), messages
    assert any("classes [3] have no samples" in m for m in messages), messages
    assert result["group_acc"] == pytest.approx({"a": (0.6 + 0.75 + 0.6) / 3, "b": None})
    assert result["group_gap"] is None and result["max_group_asym"] is None and result["group_asym"] == {}
    # C_aa = sum of R_ij over i, j in {0, 1, 2} / 9 = (.9 + 1 + .8) / 9 (R_03, R_23 left out); b undefined
    assert result["matrix"][0][0] == pytest.approx(2.7 / 9)
    assert result["matrix"][0][1] is None and result["matrix"][1] == [None, None]
    with pytest.raises(ValueError, match="empty"):
        group_metrics(FOUR, [0, 0, 1, 1], empty="drop")


@pytest.mark.parametrize("groups, match", [
    ([0, 0, 1], "length K=4"),
    ([0, 0, 1, 1, 1], "length K=4"),
    ([0, 0, 0, 0], "at least 2 groups"),
    ([0, 0, -1, 1], ">= 0"),
    ([0, 0, 2, 2], r"missing \[1\]"),
    ([0.0, 0.5, 1.0, 1.0], "integers"),
    ([True, False, True, False], "integers"),
    ([[0, 1], [0, 1]], "1-D"),
])
def test_invalid_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        subgroup_matrix(FOUR, groups)
    with pytest.raises(ValueError, match=match):
        group_metrics(FOUR, groups)


@pytest.mark.parametrize("names", [["a"], ["a", "a"], ["a|b", "c"], ["a", 1]])
def test_invalid_names(names):
    with pytest.raises(ValueError, match="names"):
        group_metrics(FOUR, [0, 0, 1, 1], names=names)


def test_invalid_counts_and_too_few_classes():
    with pytest.raises(ValueError, match="square"):
        subgroup_matrix([[1, 2, 3]], [0, 1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        max_bipartition_asym([[1, -1], [0, 1]])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="at least 2 classes"):
        max_bipartition_asym([[3, 1], [0, 0]])


def test_input_types_agree():
    expected = group_metrics(FOUR, [0, 0, 1, 1])
    assert group_metrics(np.array(FOUR), np.array([0, 0, 1, 1])) == expected
    assert group_metrics(torch.tensor(FOUR), torch.tensor([0, 0, 1, 1])) == expected
    assert max_bipartition_asym(torch.tensor(FOUR)) == max_bipartition_asym(FOUR)


def test_max_bipartition_hand_computed():
    # net outflow r_i = 1 - column sum: columns 1.05, 1.35, .9, .7 -> r = [-.05, -.35, .1, .3]
    # sorted prefixes: .3/(1*3) = .1, .4/(2*2) = .1, .35/(3*1) = 7/60 -> A = {0,2,3}, B = {1}
    # check: C_AB = (.2+.2+.2)/3 = .2, C_BA = (.25+0+0)/3 -> .2 - 1/12 = 7/60
    result = max_bipartition_asym(FOUR)
    assert result == {"value": pytest.approx(7 / 60), "exact": True,
                      "upper_bound": pytest.approx(7 / 60), "partition": [[0, 2, 3], [1]]}
    assert type(result["value"]) is float


def test_theorem1_symmetric_matrices_have_no_subgroup_asymmetry():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(2, 11))
        counts = symmetric_counts(rng, k)
        assert max_bipartition_asym(counts)["value"] <= 1e-12
        for _ in range(5):
            groups = random_groups(rng, k)
            c_hat = subgroup_matrix(counts, groups)
            np.testing.assert_allclose(c_hat, c_hat.T, atol=1e-12)
            assert group_metrics(counts, groups)["max_group_asym"] <= 1e-12


def test_theorem1_asymmetric_matrices_show_asymmetry():
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(2, 11))
        counts = rng.integers(1, 50, (k, k))
        assert max_bipartition_asym(counts)["value"] > 1e-6
        # converse (Thm. 1 part 2): partition {i}, {j}, rest recovers |R_ij - R_ji|
        if k >= 3:
            groups = np.full(k, 2)
            groups[0], groups[1] = 0, 1
            r = rates(counts)
            got = group_metrics(counts, groups)["group_asym"]["0|1"]
            assert got == pytest.approx(abs(r[0, 1] - r[1, 0]), abs=1e-12)


def test_cyclic_confusion_is_invisible_to_bipartitions():
    assert max_bipartition_asym(CYCLIC)["value"] <= 1e-12  # every r_i = .2 - .2 = 0
    assert fairness_metrics(CYCLIC)["max_asym_gap"] == pytest.approx(0.2)
    # three singleton groups do see it: |C_01 - C_10| = |.2 - 0|
    assert group_metrics(CYCLIC, [0, 1, 2])["max_group_asym"] == pytest.approx(0.2)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7, 8, 11])
def test_max_bipartition_matches_brute_force(k):
    rng = np.random.default_rng(k)
    for trial in range(5):
        counts = rng.integers(0, 30, (k, k)) * (rng.random((k, k)) < 0.7)
        counts[np.arange(k), np.arange(k)] += 1  # keep every class present
        result = max_bipartition_asym(counts)
        assert result["exact"] is True
        assert result["value"] == pytest.approx(brute_force(counts), abs=1e-12)
        side_a, side_b = result["partition"]
        assert sorted(side_a + side_b) == list(range(k)) and side_a and side_b
        achieved = bipartition_asym(counts, side_a)
        assert achieved >= 0  # A is the side confused out of more
        assert achieved == pytest.approx(result["value"], abs=1e-12)


def test_max_bipartition_skips_absent_classes():
    counts = np.array(FOUR, dtype=float)
    counts = np.insert(np.insert(counts, 1, 0, axis=0), 1, 0, axis=1)  # absent class 1
    counts[0, 1] = 5  # predictions into the absent class are ignored
    with pytest.warns(UserWarning, match=r"\[1\]"):
        result = max_bipartition_asym(counts)
    assert result["value"] == pytest.approx(brute_force(counts), abs=1e-12)
    assert sorted(sum(result["partition"], [])) == [0, 2, 3, 4]


def test_max_bipartition_large_k():
    rng = np.random.default_rng(20)
    counts = rng.integers(0, 40, (20, 20)) + np.diag(rng.integers(50, 200, 20))
    result = max_bipartition_asym(counts)
    r = rates(counts)
    assert result["exact"] is True and result["upper_bound"] == result["value"]
    assert result["value"] <= np.abs(r - r.T).max()  # average of (R_ij - R_ji) terms
    assert bipartition_asym(counts, result["partition"][0]) == pytest.approx(result["value"])
    for _ in range(200):
        side_a = set(np.flatnonzero(rng.random(20) < rng.random()).tolist())
        if 0 < len(side_a) < 20:
            assert abs(bipartition_asym(counts, side_a)) <= result["value"] + 1e-12
