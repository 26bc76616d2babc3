"""AUC_acc over an attack-budget grid and Defense Parity (speech paper §3, Eq. 1) against hand
values, its configuration checks, and a seed run that reports it on both splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distfair.config import ConfigError, validate
from distfair.evaluation import ABSTAIN, Grouping, Predictions, entry_result
from distfair.evaluation.summaries import SummaryContext
from distfair.evaluation.summaries.auc_acc import AccuracyAUC, trapezoid_auc

LABELS = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
#: per-sample attribute: samples 0-3 speaker group "f", 4-7 "m"
SPEAKER = Grouping("speaker", "sample", np.array([0, 0, 0, 0, 1, 1, 1, 1]), ["f", "m"])
#: class-level attribute: class 0 -> "lo", class 1 -> "hi"
CLASS = Grouping("cls", "class", np.array([0, 1]), ["lo", "hi"])


def entry(name: str, eps: float, correct: list[int], *, abstain: tuple = (), target=None):
    """An evaluation whose per-sample correctness is ``correct`` (wrong = the other class)."""
    preds = torch.where(torch.tensor(correct, dtype=torch.bool), LABELS, 1 - LABELS)
    preds[list(abstain)] = ABSTAIN
    pred = Predictions(labels=LABELS.clone(), preds=preds, can_abstain=bool(abstain))
    return entry_result(name, pred, 2, target, spec={"name": name, "attack": "pgd", "eps": eps})


def context(entries, groupings=(SPEAKER,), names=None):
    entries = {e.name: e for e in entries}
    return SummaryContext(split="test", entries=entries, groupings=list(groupings), class_names=["a", "b"],
                          num_classes=2, options={"entries": names or list(entries)})


def test_trapezoid_on_a_linear_axis_by_hand():
    # 0.1 * (1 + .5) / 2 + 0.2 * (.5 + .25) / 2 = 0.075 + 0.075
    assert trapezoid_auc([0.1, 0.2, 0.4], [1.0, 0.5, 0.25]) == pytest.approx(0.15)
    assert trapezoid_auc([0.0, 1.0], [1.0, 1.0]) == pytest.approx(1.0)       # not normalised by anything else


def test_auc_per_group_and_defense_parity_by_hand():
    # given out of ε order: the grid is sorted by each entry's eps
    e3 = entry("e3", 0.3, [0, 0, 0, 0, 1, 0, 0, 0])     # f 0/4, m 1/4, all 1/8
    e1 = entry("e1", 0.1, [1, 1, 1, 1, 1, 1, 1, 0])     # f 4/4, m 3/4, all 7/8
    e2 = entry("e2", 0.2, [1, 1, 0, 0, 1, 1, 0, 0])     # f 2/4, m 2/4, all 4/8
    out = AccuracyAUC().summarize(context([e3, e1, e2]))
    m = out.metrics
    auc_f = 0.1 * (1.0 + 0.5) / 2 + 0.1 * (0.5 + 0.0) / 2          # 0.075 + 0.025
    auc_m = 0.1 * (0.75 + 0.5) / 2 + 0.1 * (0.5 + 0.25) / 2        # 0.0625 + 0.0375
    auc_all = 0.1 * (7 / 8 + 4 / 8) / 2 + 0.1 * (4 / 8 + 1 / 8) / 2
    assert m["group_auc_acc/speaker/f"] == pytest.approx(auc_f) and m["group_auc_acc/speaker/m"] == pytest.approx(auc_m)
    assert m["auc_acc"] == pytest.approx(auc_all)
    assert m["defense_parity/speaker"] == pytest.approx(abs(auc_f - auc_m)) == pytest.approx(0.0)
    assert out.document["eps"] == [0.1, 0.2, 0.3] and out.document["entries"] == ["e1", "e2", "e3"]
    assert out.document["attributes"]["speaker"]["groups"]["f"]["acc"] == [1.0, 0.5, 0.0]
    assert out.entry_metrics == {}


def test_parity_is_the_largest_difference_and_abstentions_are_not_correct():
    a = entry("a", 0.0, [1, 1, 1, 1, 1, 1, 1, 1], abstain=(4, 5))   # m: 2 of 4 abstained -> 2/4 correct
    b = entry("b", 1.0, [1, 1, 1, 1, 1, 1, 1, 1])
    m = AccuracyAUC().summarize(context([a, b])).metrics
    assert m["group_auc_acc/speaker/f"] == pytest.approx(1.0)
    assert m["group_auc_acc/speaker/m"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["defense_parity/speaker"] == pytest.approx(0.25)
    assert m["auc_acc"] == pytest.approx((6 / 8 + 1.0) / 2)


def test_class_level_groups_are_sample_weighted_and_a_fixed_target_class_is_left_out():
    # target class 1: its samples (2, 3, 6, 7) are not attacked and are not part of the entry
    with pytest.warns(UserWarning, match=r"classes \[1\] have no samples"):      # the target's row
        a = entry("a", 0.1, [1, 0, 1, 1, 1, 1, 1, 1], target=1)
        b = entry("b", 0.2, [0, 0, 1, 1, 1, 0, 1, 1], target=1)
    with pytest.warns(UserWarning, match=r"groups \['hi'\]"):
        m = AccuracyAUC().summarize(context([a, b], groupings=(CLASS,))).metrics
    assert m["group_auc_acc/cls/lo"] == pytest.approx(0.1 * (3 / 4 + 1 / 4) / 2)
    assert m["group_auc_acc/cls/hi"] is None and m["defense_parity/cls"] is None
    assert m["auc_acc"] == pytest.approx(0.1 * (3 / 4 + 1 / 4) / 2)


def test_a_missing_grid_entry_is_an_error_naming_it():
    with pytest.raises(ValueError, match="e2"):
        AccuracyAUC().summarize(context([entry("e1", 0.1, [1] * 8)], names=["e1", "e2"]))


def _cfg(tiny_cfg_dict, summaries):
    tiny_cfg_dict["eval"]["attacks"] = [{"name": "pgd5", "attack": "pgd", "steps": 5},
                                        {"name": "fgsm_a", "attack": "fgsm", "eps": 0.05},
                                        {"name": "fgsm_b", "attack": "fgsm", "eps": 0.2},
                                        {"name": "roa", "attack": "roa", "size": 2}]
    tiny_cfg_dict["eval"]["summaries"] = summaries
    return tiny_cfg_dict


@pytest.mark.parametrize("summaries, key, message", [
    ({"auc_acc": {"entries": ["fgsm_a", "nope"]}}, "eval.summaries.auc_acc.entries", "'nope' is not an eval.attacks"),
    ({"auc_acc": {"entries": ["fgsm_a"]}}, "eval.summaries.auc_acc.entries", "at least 2"),
    ({"auc_acc": {"entries": ["fgsm_a", "fgsm_a"]}}, "eval.summaries.auc_acc.entries", "twice"),
    ({"auc_acc": {"entries": ["fgsm_a", "roa"]}}, "eval.summaries.auc_acc.entries", "no numeric eps"),
    ({"auc_acc": {"entries": ["fgsm_a", "fgsm_b"], "grid": 3}}, "eval.summaries.auc_acc.grid", "unknown option"),
    ({"auc_acc": 3}, "eval.summaries.auc_acc", "mapping of options"),
    ({"nope": {}}, "eval.summaries.nope", "unknown summary; known: subgroups"),
    (["auc_acc"], "eval.summaries", "must be a mapping"),
])
def test_configuration_errors_name_the_key(tiny_cfg_dict, summaries, key, message):
    with pytest.raises(ConfigError) as caught:
        validate(_cfg(tiny_cfg_dict, summaries), "speech.yaml")
    assert any(k == key and message in reason for k, reason in caught.value.problems), caught.value.problems


def test_two_entries_with_one_budget_are_refused(tiny_cfg_dict):
    cfg = _cfg(tiny_cfg_dict, {"auc_acc": {"entries": ["fgsm_a", "pgd5"]}})
    cfg["eval"]["attacks"][0]["eps"] = 0.05
    with pytest.raises(ConfigError, match="same eps"):
        validate(cfg, "speech.yaml")


def test_a_seed_run_reports_auc_acc_on_test_and_validation(tiny_cfg_dict, tmp_path):
    """The validation pass evaluates the grid entries the summary needs (and only those
    beyond the primary), so ``val_auc_acc`` and ``val_defense_parity/<attr>`` can drive a
    sweep; the test values are the trapezoid of the logged accuracies."""
    from distfair.engine.train import run_seed
    from distfair.config.space import known_val_metric

    cfg = _cfg(tiny_cfg_dict, {"auc_acc": {"entries": ["fgsm_b", "fgsm_a"]}})
    cfg["eval"]["attacks"] = cfg["eval"]["attacks"][:3]
    cfg["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    cfg["train"]["epochs"] = 1
    result = run_seed(validate(cfg, "speech.yaml"), 0, workdir=tmp_path)
    m = result.metrics
    assert m["auc_acc"] == pytest.approx((0.2 - 0.05) * (m["fgsm_a/robust_acc"] + m["fgsm_b/robust_acc"]) / 2)
    assert set(result.val_per_eval) == {"clean", "pgd5", "fgsm_a", "fgsm_b"}
    val = result.val_per_eval
    assert m["val_auc_acc"] == pytest.approx((0.2 - 0.05) * (val["fgsm_a"]["acc"] + val["fgsm_b"]["acc"]) / 2)
    assert "defense_parity/half" in m and "val_defense_parity/half" in m
    assert "val_fgsm_a/robust_acc" not in m                  # only the clean and primary passes are logged
    doc = result.document("auc_acc")
    assert doc["entries"] == ["fgsm_a", "fgsm_b"] and doc["axis"] == "linear"
    for name in ("val_auc_acc", "val_defense_parity/half", "val_group_auc_acc/half/a"):
        assert known_val_metric(name), name
