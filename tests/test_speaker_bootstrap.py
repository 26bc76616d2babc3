"""The bootstrap over speakers of the speech summaries (AUC_FPR, AUC_acc and their parities):
hand cases where resampling speakers and resampling clips disagree, an enumeration of every
resample of a tiny group, the properties of the interval, determinism, the metric names and
the plumbing from the evaluation suite."""
from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from distfair.data import DataBundle
from distfair.evaluation import ABSTAIN, Grouping, Predictions, entry_result
from distfair.evaluation.summaries import SummaryContext, check_summaries
from distfair.evaluation.summaries import _cluster_bootstrap as cb
from distfair.evaluation.summaries.auc_acc import AccuracyAUC
from distfair.evaluation.summaries.auc_fpr import FalseRejectionAUC
from distfair.results import names

GRID = {"alpha_min": 0.1, "alpha_max": 0.5, "step": 0.1}     # AUC_FPR of an always-rejected clip: 0.4


def fpr_context(pvalues, groups, speakers, *, options=None, attribute="speaker") -> SummaryContext:
    """A clean evaluation whose p-values are ``pvalues`` (rejected when p > α) and whose samples
    fall into the per-sample ``groups`` (names) and ``speakers`` (the cluster attribute)."""
    n = len(pvalues)
    y = torch.arange(n) % 2
    pred = Predictions(labels=y, preds=y.clone(), scores=torch.tensor(pvalues, dtype=torch.float64),
                       can_abstain=True, reject_rule="above", threshold=0.1)
    names_ = sorted(set(groups))
    grouping = Grouping("gender", "sample", np.array([names_.index(g) for g in groups]), names_)
    return SummaryContext(split="test", entries={"clean": entry_result("clean", pred, 2, None)},
                          groupings=[grouping], class_names=["a", "b"], num_classes=2,
                          options={**GRID, **(options or {})}, attributes={attribute: list(speakers)})


def two_speaker_groups(clips: int = 10):
    """Group F: speaker A always rejected, speaker B never; group M: speakers C and D, each
    rejected on half of their clips. ``clips`` per speaker."""
    half = [0.99, 0.0] * (clips // 2)
    pvalues = [0.99] * clips + [0.0] * clips + half + half
    groups = ["F"] * (2 * clips) + ["M"] * (2 * clips)
    speakers = ["A"] * clips + ["B"] * clips + ["C"] * clips + ["D"] * clips
    return pvalues, groups, speakers


# ------------------------------------------------------------------ speakers, not clips
def test_speaker_bootstrap_spans_the_speakers_where_a_clip_bootstrap_is_narrow():
    """F's AUC_FPR is 0.2 (half its clips, those of speaker A, rejected at every α). Resampling
    its two speakers gives AA (0.4), AB or BA (0.2), BB (0.0), each of AA and BB with probability
    1/4, so the 95% interval is the whole [0, 0.4]. Resampling its 20 clips instead (each clip its
    own cluster) gives 0.4·Binomial(20, 1/2)/20: an interval about [0.12, 0.28]. M's speakers are
    alike (each half rejected): its interval over speakers has zero width at 0.2."""
    pvalues, groups, speakers = two_speaker_groups()
    out = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers))
    m = out.metrics
    assert m["group_auc_fpr/gender/F"] == pytest.approx(0.2) and m["group_auc_fpr/gender/M"] == pytest.approx(0.2)
    assert (m["group_auc_fpr_lo/gender/F"], m["group_auc_fpr_hi/gender/F"]) == pytest.approx((0.0, 0.4))
    assert (m["group_auc_fpr_lo/gender/M"], m["group_auc_fpr_hi/gender/M"]) == pytest.approx((0.2, 0.2))
    # the parity's resamples are |F - 0.2|: 0.2 (AA or BB, half of them) or 0 -> [0, 0.2]
    assert m["fpr_parity/gender"] == pytest.approx(0.0)
    assert (m["fpr_parity_lo/gender"], m["fpr_parity_hi/gender"]) == pytest.approx((0.0, 0.2))

    per_clip = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, [str(i) for i in range(len(pvalues))]))
    lo, hi = per_clip.metrics["group_auc_fpr_lo/gender/F"], per_clip.metrics["group_auc_fpr_hi/gender/F"]
    assert 0.08 < lo < 0.16 and 0.24 < hi < 0.32, (lo, hi)
    assert hi - lo < 0.5 * (m["group_auc_fpr_hi/gender/F"] - m["group_auc_fpr_lo/gender/F"])
    assert per_clip.metrics["group_auc_fpr_hi/gender/M"] > per_clip.metrics["group_auc_fpr_lo/gender/M"]

    doc = out.document
    json.dumps(doc)
    assert doc["bootstrap"] == {**{k: doc["bootstrap"][k] for k in ("method",)}, "resamples": 1000,
                                "cluster_by": "speaker", "level": 0.95, "seed": 0, "skipped": None}
    interval = doc["attributes"]["gender"]["groups"]["F"]["interval"]
    assert interval["clusters"] == 2 and interval["undefined"] is None and interval["lo"] == pytest.approx(0.0)
    assert doc["attributes"]["gender"]["fpr_parity_interval"]["hi"] == pytest.approx(0.2)


def test_auc_acc_speaker_bootstrap_by_hand():
    """Group f: speaker A right at both budgets, speaker B wrong at both (AUC_acc over ε ∈ [0, 1]
    = 1 and 0, the group 0.5); group m: two speakers alike. Over speakers f's interval is
    [0, 1]; over clips it is narrow; m's has zero width; a speaker's clips left out of one
    budget (a fixed-target entry) count only where they were evaluated."""
    labels = torch.arange(16) % 2
    correct = torch.tensor([1] * 4 + [0] * 4 + [1, 0] * 4, dtype=torch.bool)
    grouping = Grouping("gender", "sample", np.array([0] * 8 + [1] * 8), ["f", "m"])
    speakers = ["A"] * 4 + ["B"] * 4 + ["C"] * 4 + ["D"] * 4

    def entry(name, eps):
        pred = Predictions(labels=labels, preds=torch.where(correct, labels, 1 - labels))
        return entry_result(name, pred, 2, None, spec={"name": name, "attack": "pgd", "eps": eps})

    def ctx(attrs, options=None):
        return SummaryContext(split="test", entries={"e0": entry("e0", 0.0), "e1": entry("e1", 1.0)},
                              groupings=[grouping], class_names=["a", "b"], num_classes=2,
                              options={"entries": ["e0", "e1"], **(options or {})}, attributes=attrs)

    m = AccuracyAUC().summarize(ctx({"speaker": speakers})).metrics
    assert m["group_auc_acc/gender/f"] == pytest.approx(0.5) and m["group_auc_acc/gender/m"] == pytest.approx(0.5)
    assert (m["group_auc_acc_lo/gender/f"], m["group_auc_acc_hi/gender/f"]) == pytest.approx((0.0, 1.0))
    assert (m["group_auc_acc_lo/gender/m"], m["group_auc_acc_hi/gender/m"]) == pytest.approx((0.5, 0.5))
    assert (m["defense_parity_lo/gender"], m["defense_parity_hi/gender"]) == pytest.approx((0.0, 0.5))
    clips = AccuracyAUC().summarize(ctx({"speaker": [str(i) for i in range(16)]})).metrics
    assert clips["group_auc_acc_hi/gender/f"] - clips["group_auc_acc_lo/gender/f"] < 0.9
    off = AccuracyAUC().summarize(ctx({"speaker": speakers}, {"bootstrap": {"resamples": 0}}))
    assert not any("_lo/" in k or "_hi/" in k for k in off.metrics)
    assert off.document["bootstrap"]["skipped"] == "off (resamples: 0)"


def test_per_budget_membership_counts_only_evaluated_clips():
    """The identity resample (every speaker once) reproduces the summary's own AUC_acc when a
    budget leaves clips out (a fixed target's own class)."""
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    a = entry_result("a", Predictions(labels=labels, preds=labels.clone()), 2, None,
                     spec={"name": "a", "attack": "pgd", "eps": 0.0})
    with pytest.warns(UserWarning, match="no samples"):                            # class 0 left out
        b = entry_result("b", Predictions(labels=labels, preds=torch.tensor([1, 1, 0, 0, 1, 0])), 2, 0,
                         spec={"name": "b", "attack": "pgd", "eps": 0.5, "target": 0})
    assert b.members.tolist() == [False, True, False, True, False, True]
    clusters = np.array([0, 0, 1, 1, 2, 2])
    evaluated = np.stack([a.members, b.members], axis=1)
    correct = np.stack([a.robust & a.members, b.robust & b.members], axis=1)
    hits, sizes = cb.cluster_counts(clusters, np.ones(6, dtype=bool), correct, evaluated)
    assert hits.tolist() == [[2, 1], [2, 0], [2, 0]] and sizes.tolist() == [[2, 1], [2, 1], [2, 1]]
    ones = np.ones((1, 3))
    expected = 0.5 * (1.0 + 1 / 3) / 2
    assert cb.group_statistic(ones, hits, sizes, cb.trapezoid_weights([0.0, 0.5]))[0] == pytest.approx(expected)
    # a resample of speakers none of whom was evaluated at some budget has no value
    none = cb.group_statistic(np.array([[1.0, 0, 0]]), np.array([[1, 0], [0, 0], [0, 0]]),
                              np.array([[1, 0], [1, 1], [1, 1]]), np.array([0.5, 0.5]))
    assert np.isnan(none[0])


# --------------------------------------------------------------- the resampling, exactly
def test_every_resample_of_a_tiny_group_enumerated():
    """Speaker A: 1 clip, rejected; speaker B: 3 clips, never. A resample of 2 draws is AA
    (1/4), AB (1/2) or BB (1/4), and its AUC is a ratio of sums over the drawn clips: AA 1·w,
    AB w/4 (one of four clips), BB 0 (not the mean of the speakers' means, w/2)."""
    hits, sizes = np.array([[1.0], [0.0]]), np.array([1.0, 3.0])
    w = 0.4
    enumerated = {draw: cb.group_statistic(np.bincount(draw, minlength=2)[None].astype(float), hits, sizes,
                                           np.array([w]))[0]
                  for draw in itertools.product(range(2), repeat=2)}
    assert enumerated == pytest.approx({(0, 0): w, (0, 1): w / 4, (1, 0): w / 4, (1, 1): 0.0})
    weights = cb.resample_weights(np.random.default_rng(7), 2, 20_000)
    assert weights.shape == (20_000, 2) and (weights.sum(axis=1) == 2).all()
    freq = {k: np.mean((weights == np.array(k)).all(axis=1)) for k in ((2, 0), (1, 1), (0, 2))}
    assert freq == pytest.approx({(2, 0): 0.25, (1, 1): 0.5, (0, 2): 0.25}, abs=0.015)
    values = cb.group_statistic(weights, hits, sizes, np.array([w]))
    assert set(np.round(values, 12)) == {round(w, 12), round(w / 4, 12), 0.0}
    assert cb.interval(values, 0.95) == pytest.approx((0.0, w))
    assert cb.interval(values, 0.4) == pytest.approx((w / 4, w / 4))     # the middle 40%: all AB


def test_trapezoid_weights_reproduce_numpy():
    x = np.array([0.001, 0.002, 0.004, 0.01])
    y = np.array([0.9, 0.5, 0.25, 0.0])
    assert cb.trapezoid_weights(x) @ y == pytest.approx(np.trapezoid(y, x))


# ------------------------------------------------------------------------- properties
def test_the_interval_holds_the_point_estimate_and_identical_speakers_give_zero_width():
    rng = np.random.default_rng(3)
    speakers = [f"s{i // 8}" for i in range(80)]                     # 10 speakers of 8 clips
    groups = ["F" if i < 40 else "M" for i in range(80)]
    pvalues = list(rng.uniform(0, 1, 80))
    m = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers)).metrics
    for g in ("F", "M"):
        assert m[f"group_auc_fpr_lo/gender/{g}"] <= m[f"group_auc_fpr/gender/{g}"] <= m[f"group_auc_fpr_hi/gender/{g}"]
        assert m[f"group_auc_fpr_lo/gender/{g}"] < m[f"group_auc_fpr_hi/gender/{g}"]
    same = [0.05, 0.25, 0.45, 0.95] * 4                            # every speaker the same four clips
    m = FalseRejectionAUC().summarize(fpr_context(same, ["F"] * 8 + ["M"] * 8, [f"s{i // 4}" for i in range(16)])).metrics
    for g in ("F", "M"):
        assert m[f"group_auc_fpr_lo/gender/{g}"] == pytest.approx(m[f"group_auc_fpr/gender/{g}"])
        assert m[f"group_auc_fpr_hi/gender/{g}"] == pytest.approx(m[f"group_auc_fpr/gender/{g}"])


def test_a_one_speaker_group_has_no_interval_and_neither_has_its_parity():
    pvalues, groups, speakers = two_speaker_groups()
    speakers = ["A"] * 20 + speakers[20:]                           # group F: one speaker
    out = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers))
    m = out.metrics
    assert m["group_auc_fpr_lo/gender/F"] is None and m["group_auc_fpr_hi/gender/F"] is None
    assert m["group_auc_fpr_lo/gender/M"] is not None                # M still has its two speakers
    assert m["fpr_parity_lo/gender"] is None and m["fpr_parity_hi/gender"] is None
    assert m["group_auc_fpr/gender/F"] == pytest.approx(0.2)          # the point estimate stays
    info = out.document["attributes"]["gender"]
    assert info["groups"]["F"]["interval"]["clusters"] == 1
    assert "single speaker" in info["groups"]["F"]["interval"]["undefined"]
    assert "['F']" in info["fpr_parity_interval"]["undefined"]


def test_the_same_seed_gives_the_same_interval_and_the_seed_is_recorded():
    rng = np.random.default_rng(5)
    pvalues = list(rng.uniform(0, 1, 60))
    groups, speakers = ["F"] * 30 + ["M"] * 30, [f"s{i // 5}" for i in range(60)]
    runs = [FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers, options={"bootstrap": opts}))
            for opts in ({"seed": 11}, {"seed": 11}, {"seed": 12})]
    keys = [k for k in runs[0].metrics if "_lo/" in k or "_hi/" in k]
    assert len(keys) == 6
    assert all(runs[0].metrics[k] == runs[1].metrics[k] for k in keys)
    assert any(runs[0].metrics[k] != runs[2].metrics[k] for k in keys)
    assert runs[0].document["bootstrap"]["seed"] == 11 and runs[2].document["bootstrap"]["seed"] == 12
    fewer = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers,
                                                      options={"bootstrap": {"resamples": 50, "level": 0.5}}))
    assert fewer.document["bootstrap"]["resamples"] == 50 and fewer.document["bootstrap"]["level"] == 0.5


def test_off_or_without_the_cluster_attribute_there_are_no_intervals():
    pvalues, groups, speakers = two_speaker_groups()
    for options, attribute, reason in (({"bootstrap": {"resamples": 0}}, "speaker", "off (resamples: 0)"),
                                       ({}, "client", "no per-sample attribute 'speaker'")):
        out = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers, options=options,
                                                        attribute=attribute))
        assert not any(k.split("/")[0].endswith(("_lo", "_hi")) for k in out.metrics)
        assert reason in out.document["bootstrap"]["skipped"]
        assert "interval" not in out.document["attributes"]["gender"]["groups"]["F"]
    voice = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers, attribute="voice",
                                                      options={"bootstrap": {"cluster_by": "voice"}}))
    assert voice.metrics["group_auc_fpr_hi/gender/F"] == pytest.approx(0.4)


def test_bootstrap_options_are_checked():
    entries = [{"name": "e0", "attack": "pgd", "eps": 0.0}, {"name": "e1", "attack": "pgd", "eps": 1.0}]
    assert check_summaries({"auc_fpr": {"bootstrap": {"resamples": 200, "cluster_by": "voice", "level": 0.9,
                                                      "seed": 3}}}, entries) == []
    assert check_summaries({"auc_acc": {"entries": ["e0", "e1"], "bootstrap": {"resamples": 0}}}, entries) == []
    problems = dict(check_summaries({"auc_fpr": {"bootstrap": {"resamples": -1, "level": 1.0, "seed": 1.5,
                                                               "cluster_by": "", "what": 1}}}, entries))
    assert set(problems) == {f"eval.summaries.auc_fpr.bootstrap.{k}" for k in
                             ("resamples", "level", "seed", "cluster_by", "what")}
    assert "eval.summaries.auc_acc.bootstrap" in dict(check_summaries(
        {"auc_acc": {"entries": ["e0", "e1"], "bootstrap": 1000}}, entries))


# ------------------------------------------------------------------------ names, suite
def test_interval_keys_follow_the_metric_names():
    for family in names.BOOTSTRAPPED_FAMILIES:
        for end in names.BOOTSTRAP_BOUNDS:
            bound = names.bound_family(family, end)
            assert names.NESTED_FAMILIES[bound] == names.NESTED_FAMILIES[family]
            assert bound in names.METRIC_RANGES and names.metric_range(bound + "/x") is None
    assert names.bound_key("fpr_parity/gender", "lo") == "fpr_parity_lo/gender"
    assert names.bound_key("val_group_auc_acc/age/old", "hi") == "val_group_auc_acc_hi/age/old"
    assert names.bound_key("robust_acc", "lo") is None and names.bound_key("acc", "lo") is None
    key = names.MetricKey.parse("group_auc_fpr_lo/gender/F")
    assert (key.split, key.evaluation, key.family, key.fields) == ("test", None, "group_auc_fpr_lo",
                                                                   {"attribute": "gender", "group": "F"})
    assert names.known_val_metric("val_defense_parity_hi/gender") and names.metric_role("defense_parity_lo/g") == "test"
    with pytest.raises(ValueError):
        names.bound_family("fpr_parity", "mid")
    from distfair.results.record import summary_rows

    rows = summary_rows({"test": {"group_auc_fpr_lo/gender/F": 0.1, "fpr_parity_hi/gender": None},
                         "val": {"defense_parity_hi/age": 0.3}}, step=0)
    assert [(r["metric"], r["attribute"], r["group"], r["mlflow_key"]) for r in rows] == [
        ("group_auc_fpr_lo", "gender", "F", "group_auc_fpr_lo/gender/F"),
        ("fpr_parity_hi", "gender", None, "fpr_parity_hi/gender"),
        ("defense_parity_hi", "age", None, "val_defense_parity_hi/age")]


def test_the_evaluation_suite_hands_the_speakers_to_the_summaries(tmp_path):
    """``final_evaluation`` passes the test set's per-sample attributes: the contract's toy set
    has three speakers per voice, so both voice groups get an interval."""
    from distfair.evaluation.suite import final_evaluation
    from distfair.testing.summaries import CPU, ENTRIES, problem

    model, data = problem()
    eval_cfg = {"attacks": ENTRIES[:2], "subgroups": {"voice": "metadata"},
                "summaries": {"auc_acc": {"entries": ["fgsm_small", "fgsm_large"], "bootstrap": {"resamples": 200}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = final_evaluation(model, data, eval_cfg, 0, workdir=tmp_path, device=CPU, batch_size=8)
    assert not result.errors
    doc = result.document("auc_acc")
    assert doc["bootstrap"]["skipped"] is None and doc["bootstrap"]["resamples"] == 200
    assert {g: v["interval"]["clusters"] for g, v in doc["attributes"]["voice"]["groups"].items()} == {"v1": 3, "v2": 3}
    assert "group_auc_acc_lo/voice/v1" in result.metrics and "defense_parity_hi/voice" in result.metrics
    bare = dataclasses.replace(data, test_attributes={"voice": data.test_attributes["voice"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = final_evaluation(model, bare, eval_cfg, 0, workdir=tmp_path, device=CPU, batch_size=8)
    assert "speaker" in result.document("auc_acc")["bootstrap"]["skipped"]
    assert isinstance(bare, DataBundle) and ABSTAIN == -1


def test_the_report_lists_the_speaker_intervals_beside_the_speech_columns(tmp_path):
    """``distfair report``: a column with speaker-level intervals gets a footnote (mean over
    seeds of each end, and the seeds that had one) in report.md and report.html, and a list in
    tables.json; a seed without one (a one-speaker group) is not counted."""
    from distfair.report import ConfigurationInput, Report, SeedInput, build_tables, write_report

    def seed(s, parity, lo=None, hi=None):
        metrics = {"robust_acc": 0.5 + s / 100, "fpr_parity/gender": parity}
        if lo is not None:
            metrics |= {"fpr_parity_lo/gender": lo, "fpr_parity_hi/gender": hi}
        return SeedInput(seed=s, run_id=f"r{s}", metrics=metrics)

    flat = {"dataset.name": "audiomnist", "eval.attacks.0.name": "pgd", "seeds": "[0, 1, 2]"}
    config = ConfigurationInput(run_id="a" * 32, name="run", status="FINISHED", params=flat, tags={},
                                seeds=[seed(0, 0.1, 0.02, 0.2), seed(1, 0.12, 0.04, 0.3), seed(2, 0.2)], experiment="e")
    tables = build_tables([config], metrics=["robust_acc", "fpr_parity"])
    report = Report("t", {"description": "hand-made"}, tables, [], "now", "sqlite:///x.db")
    files = write_report(report, tmp_path)
    note = "Speakers, fpr_parity/gender: percentile interval of a bootstrap over the test set's speakers"
    md = files["md"].read_text()
    assert note in md and "C1 [0.030, 0.250] (n=2)" in md
    assert "C1 [0.030, 0.250] (n=2)" in files["html"].read_text()
    doc = json.loads(files["json"].read_text())
    assert doc["speaker_intervals"] == [{"column": "fpr_parity/gender", "row": "C1", "lo": pytest.approx(0.03),
                                         "hi": pytest.approx(0.25), "n": 2}]
    assert "fpr_parity_lo/gender" not in [c["name"] for c in doc["columns"]]


def test_a_combination_of_attributes_is_one_cluster():
    """``cluster_by: [accent, variant]``: clips of two voices that share accent and variant are
    one cluster (the synthetic set's timbre), so group F, whose two voices share both, has one
    cluster and no interval; over voices it has two."""
    pvalues, groups, speakers = two_speaker_groups()
    accent = ["en"] * 20 + ["en"] * 10 + ["us"] * 10
    variant = ["f3"] * 20 + ["m3"] * 20
    ctx = fpr_context(pvalues, groups, speakers, attribute="voice",
                      options={"bootstrap": {"cluster_by": ["accent", "variant"]}})
    ctx = dataclasses.replace(ctx, attributes={**ctx.attributes, "accent": accent, "variant": variant})
    out = FalseRejectionAUC().summarize(ctx)
    info = out.document["attributes"]["gender"]["groups"]
    assert info["F"]["interval"]["clusters"] == 1 and "(accent, variant) combination" in info["F"]["interval"]["undefined"]
    assert info["M"]["interval"]["clusters"] == 2
    assert out.document["bootstrap"]["cluster_by"] == ["accent", "variant"]
    assert out.metrics["group_auc_fpr_lo/gender/F"] is None
    missing = FalseRejectionAUC().summarize(fpr_context(pvalues, groups, speakers, attribute="accent",
                                                        options={"bootstrap": {"cluster_by": ["accent", "variant"]}}))
    assert "'variant'" in missing.document["bootstrap"]["skipped"]
    entries = [{"name": "e0", "attack": "pgd", "eps": 0.0}]
    assert check_summaries({"auc_fpr": {"bootstrap": {"cluster_by": ["accent", "variant"]}}}, entries) == []
    assert check_summaries({"auc_fpr": {"bootstrap": {"cluster_by": ["accent", "accent"]}}}, entries)
    assert check_summaries({"auc_fpr": {"bootstrap": {"cluster_by": []}}}, entries)


def test_the_speech_tune_files_bootstrap_over_the_held_out_voices():
    from pathlib import Path

    from distfair.config import load_config, load_configurations
    from distfair.experiment.sweep import load_sweep

    repo = Path(__file__).resolve().parent.parent / "tune_spaces"
    for name in ("speech_quickstart.yaml", "speech_interventions_cpu.yaml"):
        cfg = load_config(repo / name)
        assert cfg["eval"]["summaries"]["auc_acc"]["bootstrap"] == {"cluster_by": "voice"}, name
    cfg, _ = load_sweep(str(repo / "speech_interventions.yaml"))
    assert cfg["eval"]["summaries"]["auc_acc"]["bootstrap"] == {"cluster_by": "voice"}
    for _, cfg in load_configurations(repo / "speech_rejection.yaml"):
        assert cfg["eval"]["summaries"]["auc_fpr"]["bootstrap"] == {"cluster_by": "voice"}
