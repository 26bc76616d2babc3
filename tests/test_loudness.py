"""Loudness in the speech study: per-group SNR at each attack budget and at a predictor's noise σ,
budgets relative to each clip's RMS, and AUC_acc on a normalised log-ε axis (speech paper 003
§3 Eq. 1, §4.2); values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distfair.attacks import build_attack
from distfair.attacks._base import clip_rms
from distfair.evaluation import Grouping, Predictions, entry_result
from distfair.evaluation.loudness import clip_power, mean_snr, noise_snr_db, snr_db
from distfair.evaluation.predict import predict_dataset
from distfair.evaluation.summaries import SummaryContext
from distfair.evaluation.summaries.auc_acc import AccuracyAUC, log_eps_auc
from distfair.testing.attacks import cases

LABELS = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
SPEAKER = Grouping("speaker", "sample", np.array([0, 0, 0, 0, 1, 1, 1, 1]), ["f", "m"])


# ------------------------------------------------------------------------------ log-ε axis
def test_log_eps_auc_by_hand():
    # log10 ε = -4, -3, -2, -1 (unit spacing): (1 + .8)/2 + (.8 + .4)/2 + (.4 + .1)/2 = 1.75, over a range of 3
    assert log_eps_auc([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.8, 0.4, 0.1]) == pytest.approx(1.75 / 3)
    # uneven spacing: log10 0.1 = -1, log10 0.3 = -0.5229; a constant accuracy a scores a
    assert log_eps_auc([0.1, 0.3], [0.6, 0.6]) == pytest.approx(0.6)
    assert log_eps_auc([0.01, 0.1, 0.3], [1.0, 0.5, 0.0]) == pytest.approx(
        (1 * 0.75 + (math.log10(0.3) + 1) * 0.25) / (math.log10(0.3) + 2))


def _entry(name, eps, correct, signal=None, perturbation=None, sigma=None):
    preds = torch.where(torch.tensor(correct, dtype=torch.bool), LABELS, 1 - LABELS)
    pred = Predictions(labels=LABELS.clone(), preds=preds, signal_power=signal, perturbation_power=perturbation,
                       noise_sigma=sigma)
    spec = None if name == "clean" else {"name": name, "attack": "pgd", "eps": eps}
    return entry_result(name, pred, 2, None, spec=spec)


def _context(entries, options):
    return SummaryContext(split="test", entries={e.name: e for e in entries}, groupings=[SPEAKER],
                          class_names=["a", "b"], num_classes=2, options=options)


def test_auc_acc_logeps_per_group_and_its_parity_beside_the_linear_one():
    e1 = _entry("e1", 1e-3, [1, 1, 1, 1, 1, 1, 1, 1])      # f 1, m 1
    e2 = _entry("e2", 1e-2, [1, 1, 1, 1, 1, 1, 0, 0])      # f 1, m .5
    e3 = _entry("e3", 1e-1, [1, 1, 0, 0, 0, 0, 0, 0])      # f .5, m 0
    out = AccuracyAUC().summarize(_context([e1, e2, e3], {"entries": ["e1", "e2", "e3"], "log_eps": True}))
    m = out.metrics
    f = ((1 + 1) / 2 + (1 + 0.5) / 2) / 2                   # 0.875
    mm = ((1 + 0.5) / 2 + (0.5 + 0) / 2) / 2                # 0.5
    assert m["group_auc_acc_logeps/speaker/f"] == pytest.approx(f)
    assert m["group_auc_acc_logeps/speaker/m"] == pytest.approx(mm)
    assert m["defense_parity_logeps/speaker"] == pytest.approx(f - mm)
    assert m["auc_acc_logeps"] == pytest.approx(((1 + 0.75) / 2 + (0.75 + 0.25) / 2) / 2)
    # the paper's linear AUC_acc is still there, unchanged
    assert m["group_auc_acc/speaker/f"] == pytest.approx(0.009 * 1 + 0.09 * 0.75)
    assert out.document["log_eps"]["auc_acc"] == pytest.approx(m["auc_acc_logeps"])
    plain = AccuracyAUC().summarize(_context([e1, e2, e3], {"entries": ["e1", "e2", "e3"]})).metrics
    assert not any("logeps" in k for k in plain)


def test_log_eps_options_are_checked():
    entries = [{"name": "a", "attack": "pgd", "eps": 0.0}, {"name": "b", "attack": "pgd", "eps": 0.1},
               {"name": "c", "attack": "pgd", "eps": 0.2, "eps_relative_to": "rms"}]
    assert AccuracyAUC.check_options({"entries": ["a", "b"]}, entries) == []
    assert [k for k, _ in AccuracyAUC.check_options({"entries": ["a", "b"], "log_eps": True}, entries)] == ["log_eps"]
    assert [k for k, _ in AccuracyAUC.check_options({"entries": ["a", "b"], "log_eps": "yes"}, entries)] == ["log_eps"]
    problems = AccuracyAUC.check_options({"entries": ["b", "c"]}, entries)
    assert len(problems) == 1 and "mix absolute and RMS-relative" in problems[0][1]


# ------------------------------------------------------------------------------------ SNR
def test_snr_by_hand():
    assert snr_db([0.01, 1e-4], [1e-4, 1e-4]).tolist() == pytest.approx([20.0, 0.0])
    assert np.isnan(snr_db([0.01, 0.0], [0.0, 1e-4])).all()              # no finite SNR either way
    assert noise_snr_db([0.01, 1e-4], 0.1).tolist() == pytest.approx([0.0, -20.0])
    assert mean_snr(np.array([20.0, np.nan, 0.0]), np.array([True, True, True])) == (10.0, 2)
    assert mean_snr(np.array([np.nan]), np.array([True])) == (None, 0)
    x = torch.tensor([[[0.1, -0.1]], [[0.0, 0.2]]])
    assert clip_power(x).tolist() == pytest.approx([0.01, 0.02])


def test_group_snr_at_each_budget():
    # f clips: power 1e-2, m clips 1e-4; perturbation power 1e-4 at e1 (clip 7 untouched), 1e-2 at e2
    signal = torch.tensor([1e-2] * 4 + [1e-4] * 4, dtype=torch.float64)
    e1 = _entry("e1", 0.01, [1] * 8, signal, torch.tensor([1e-4] * 7 + [0.0], dtype=torch.float64))
    e2 = _entry("e2", 0.1, [0] * 8, signal, torch.full((8,), 1e-2, dtype=torch.float64))
    clean = _entry("clean", None, [1] * 8, signal, None)
    out = AccuracyAUC().summarize(_context([clean, e1, e2], {"entries": ["e1", "e2"]}))
    em = out.entry_metrics
    assert em["e1"]["group_snr_db/speaker/f"] == pytest.approx(20.0)
    assert em["e1"]["group_snr_db/speaker/m"] == pytest.approx(0.0)
    assert em["e1"]["snr_db"] == pytest.approx(4 * 20.0 / 7)             # clip 7 has no finite SNR
    assert em["e2"]["group_snr_db/speaker/f"] == pytest.approx(0.0)
    assert em["e2"]["group_snr_db/speaker/m"] == pytest.approx(-20.0)
    groups = out.document["attributes"]["speaker"]["groups"]
    assert groups["m"]["snr_db"] == pytest.approx([0.0, -20.0]) and groups["m"]["snr_n"] == [3, 4]


def test_auc_fpr_reports_the_snr_at_randomized_smoothings_sigma():
    """σ = 0.1: a clip of power 1e-2 is at 0 dB, 1e-4 at -20 dB; a silent clip has no finite SNR."""
    from distfair.evaluation.summaries.auc_fpr import FalseRejectionAUC

    signal = torch.tensor([1e-2] * 4 + [1e-4, 1e-4, 1e-4, 0.0], dtype=torch.float64)   # clip 7 silent
    pred = Predictions(labels=LABELS.clone(), preds=LABELS.clone(), scores=torch.full((8,), 0.5, dtype=torch.float64),
                       can_abstain=True, reject_rule="above", threshold=0.001, signal_power=signal, noise_sigma=0.1)
    clean = entry_result("clean", pred, 2, None)
    out = FalseRejectionAUC().summarize(_context([clean], {}))
    assert out.metrics["group_noise_snr_db/speaker/f"] == pytest.approx(0.0)
    assert out.metrics["group_noise_snr_db/speaker/m"] == pytest.approx(-20.0)
    assert out.metrics["noise_snr_db"] == pytest.approx(4 * 0.0 / 7 + 3 * -20.0 / 7)
    assert out.document["noise"]["attributes"]["speaker"]["m"] == {"snr_db": pytest.approx(-20.0), "snr_n": 3}
    # a predictor without input noise: nothing of the kind
    plain = entry_result("clean", Predictions(labels=LABELS.clone(), preds=LABELS.clone(),
                                              scores=torch.full((8,), 0.5, dtype=torch.float64), can_abstain=True,
                                              reject_rule="above", threshold=0.001, signal_power=signal), 2, None)
    assert not any("snr" in k for k in FalseRejectionAUC().summarize(_context([plain], {})).metrics)


def _linear_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = (torch.rand(6, 1, 16) - 0.5) * torch.tensor([0.2, 0.2, 0.4, 0.4, 0.8, 0.8])[:, None, None]
    return model, torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2, 0, 1, 2]))


def test_predict_dataset_measures_the_powers_of_an_untargeted_attack():
    model, data = _linear_problem()
    x = data.tensors[0]
    attack = build_attack("fgsm", eps=0.05, bounds=(-1.0, 1.0))
    pred = predict_dataset(model, data, 3, device=torch.device("cpu"), batch_size=4, attack=attack)
    assert pred.signal_power.tolist() == pytest.approx(x.pow(2).flatten(1).mean(1).tolist())
    # FGSM moves every sample of a linear model by exactly ±ε (no clamping inside [-0.4, 0.4])
    assert pred.perturbation_power.tolist() == pytest.approx([0.05 ** 2] * 6, rel=1e-5)
    targeted = predict_dataset(model, data, 3, device=torch.device("cpu"), batch_size=4, attack=attack, target=1)
    assert targeted.perturbation_power is None and targeted.signal_power is not None


def test_randomized_smoothing_predictors_declare_their_noise():
    from distfair.defenses.randomized_smoothing import SmoothedPredictor

    predictor = SmoothedPredictor(sigma=0.25, n_samples=10, alpha=0.001, bounds=(-1.0, 1.0),
                                  generator=torch.Generator().manual_seed(0))
    assert predictor.noise_sigma == 0.25


# -------------------------------------------------------------------- RMS-relative budgets
def test_fgsm_relative_to_rms_by_hand():
    model, data = _linear_problem()
    x, y = data.tensors
    attack = build_attack("fgsm", eps=0.5, bounds=(-1.0, 1.0), eps_relative_to="rms")
    delta = attack(model, x, y) - x
    rms = x.pow(2).flatten(1).mean(1).sqrt()
    # every element moves by exactly 0.5 · rms(x_i), the sample's own budget
    assert delta.abs().flatten(1).amax(1).tolist() == pytest.approx((0.5 * rms).tolist(), rel=1e-5)
    assert delta.abs().flatten(1).amin(1).tolist() == pytest.approx((0.5 * rms).tolist(), rel=1e-5)
    assert attack.norm == "linf_rms" and build_attack("fgsm", eps=0.5, bounds=(-1.0, 1.0)).norm == "linf"
    assert clip_rms(x).shape == (6, 1, 1)


@pytest.mark.parametrize("name", ["pgd", "fgsm", "cw_linf"])
def test_relative_budget_is_respected_per_sample_and_the_range_too(name):
    for case, model, x, y, bounds in cases():
        attack = build_attack(name, eps=0.3, bounds=bounds, eps_relative_to="rms", **(
            {"steps": 5} if name != "fgsm" else {}))
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        budget = 0.3 * x.pow(2).flatten(1).mean(1).sqrt()
        assert ((x_adv - x).abs().flatten(1).amax(1) <= budget + 1e-6).all(), case
        assert x_adv.min() >= bounds[0] and x_adv.max() <= bounds[1], case
        again = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x_adv, again), case
    # a silent clip has no budget: it is returned unchanged
    model, data = _linear_problem()
    x, y = data.tensors
    x = x.clone()
    x[0] = 0.0
    x_adv = build_attack(name, eps=0.3, bounds=(-1.0, 1.0), eps_relative_to="rms")(model, x, y)
    assert torch.equal(x_adv[0], x[0])


def test_default_is_the_absolute_budget_and_bad_values_are_refused():
    model, data = _linear_problem()
    x, y = data.tensors
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = build_attack("pgd", eps=0.05, bounds=(-1.0, 1.0), steps=3)(model, x, y, generator=g())
    b = build_attack("pgd", eps=0.05, bounds=(-1.0, 1.0), steps=3, eps_relative_to="none")(model, x, y, generator=g())
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eps_relative_to must be one of"):
        build_attack("pgd", eps=0.05, bounds=(-1.0, 1.0), eps_relative_to="peak")


def test_defenses_with_their_own_inner_maximisation_refuse_a_relative_budget():
    from distfair.defenses import DEFENSES

    relative = build_attack("pgd", eps=0.05, bounds=(-1.0, 1.0), eps_relative_to="rms")
    assert "linf_rms" in DEFENSES["trades"].attack_problem(relative)
    assert DEFENSES["trades"].attack_problem(build_attack("pgd", eps=0.05, bounds=(-1.0, 1.0))) is None
    assert DEFENSES["waveform_at"].attack_problem(relative) is None


def test_a_seed_run_logs_snr_relative_budgets_log_eps_auc_and_training_group_sizes(tiny_cfg_dict, tmp_path):
    """End to end through the engine: RMS-relative FGSM grid entries, ``log_eps``, and the
    subgroups' training-set sizes (speech paper 003 §5.2.2) on the run's metrics."""
    from distfair.config import validate
    from distfair.data import build_dataset
    from distfair.engine.train import run_seed
    from distfair.evaluation.subgroups import dataset_labels

    cfg = tiny_cfg_dict
    cfg["eval"]["attacks"] = [{"name": "fgsm_a", "attack": "fgsm", "eps": 0.05, "eps_relative_to": "rms"},
                              {"name": "fgsm_b", "attack": "fgsm", "eps": 0.5, "eps_relative_to": "rms"}]
    cfg["eval"]["summaries"] = {"auc_acc": {"entries": ["fgsm_a", "fgsm_b"], "log_eps": True}}
    cfg["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    cfg["train"]["epochs"] = 1
    cfg = validate(cfg, "speech.yaml")
    m = run_seed(cfg, 0, workdir=tmp_path).metrics
    # two budgets: the normalised log-ε area is the mean of the two accuracies
    assert m["auc_acc_logeps"] == pytest.approx((m["fgsm_a/robust_acc"] + m["fgsm_b/robust_acc"]) / 2)
    # a budget of r·rms moves each element by at most r·rms: SNR >= -20·log10(r) (clamping only raises it)
    assert m["fgsm_a/snr_db"] >= -20 * math.log10(0.05) - 1e-6
    assert m["fgsm_b/snr_db"] >= -20 * math.log10(0.5) - 1e-6
    assert "fgsm_a/group_snr_db/half/a" in m and "defense_parity_logeps/half" in m
    labels = dataset_labels(build_dataset(**cfg["dataset"]).train)
    assert m["group_train_n/half/a"] == float(np.isin(labels, [0, 1]).sum())
    assert m["group_train_n/half/b"] == float((labels == 2).sum())
