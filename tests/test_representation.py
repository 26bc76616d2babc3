"""Speech paper 003 §5.2.2: each group's training-set size |X_train,s|, logged by the run
(``group_train_n/<attr>/<group>``), and its correlation with the group's AUC_FPR in
``distfair analyze``; values computed by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from distfair.data import DataBundle
from distfair.evaluation.group_sizes import training_group_sizes
from distfair.evaluation.subgroups import resolve_groupings
from distfair.report import meta_analysis as analysis
from distfair.report import meta_analysis_output as output
from distfair.report.meta_analysis import ConfigurationInput, SeedInput
from distfair.report.representation import ALL_ATTRIBUTES, representation_correlations
from distfair.results.names import MetricKey

Z975 = 1.959964


# ------------------------------------------------------------------ the run's training sizes
def _bundle(train_attributes=True) -> DataBundle:
    """Train: 10 samples, classes 0,1 alternating; gender f x4, m x5, unknown x1; accent us x6, gb x4.
    Test: 6 samples with every value present."""
    train_gender = ["f", "f", "f", "f", "m", "m", "m", "m", "m", "unknown"]
    train_accent = ["us", "us", "gb", "gb", "us", "us", "us", "gb", "gb", "us"]
    test_gender = ["f", "f", "m", "m", "unknown", "m"]
    test_accent = ["us", "gb", "us", "gb", "us", "us"]
    train = TensorDataset(torch.zeros(10, 2), torch.arange(10) % 2)
    test = TensorDataset(torch.zeros(6, 2), torch.arange(6) % 2)
    return DataBundle(train, test, test, num_classes=2, in_shape=(2,), bounds=(0.0, 1.0), class_names=["a", "b"],
                      test_attributes={"gender": test_gender, "accent": test_accent},
                      val_attributes={"gender": test_gender, "accent": test_accent},
                      train_attributes={"gender": train_gender, "accent": train_accent} if train_attributes else {})


def test_training_group_sizes_follow_the_test_groups_by_hand():
    data = _bundle()
    spec = {"gender": "metadata", "accent": "metadata", "gender_accent": {"intersect": ["gender", "accent"]},
            "parity": {"a": "even", "b": "odd"}}
    sizes, skipped = training_group_sizes(resolve_groupings(spec, data), data)
    assert skipped == {}
    # "unknown" is left out of the test groups by default, so its training sample is in no group
    assert sizes["gender"] == {"f": 4, "m": 5}
    assert sizes["accent"] == {"gb": 4, "us": 6}
    assert sizes["gender_accent"] == {"f|gb": 2, "f|us": 2, "m|gb": 2, "m|us": 3}
    assert sizes["parity"] == {"even": 5, "odd": 5}                 # a class map: the training classes


def test_a_group_absent_from_training_counts_zero_and_missing_values_are_skipped_with_the_reason():
    data = _bundle()
    data = DataBundle(**{**data.__dict__, "train_attributes": {"gender": ["f"] * 10, "accent": ["us"] * 10}})
    sizes, _ = training_group_sizes(resolve_groupings({"gender": "metadata"}, data), data)
    assert sizes["gender"] == {"f": 10, "m": 0}
    bare = _bundle(train_attributes=False)
    sizes, skipped = training_group_sizes(resolve_groupings({"gender": "metadata", "parity": {"a": "x", "b": "y"}},
                                                            bare), bare)
    assert sizes == {"parity": {"x": 5, "y": 5}}
    assert "no training-set values of 'gender'" in skipped["gender"]


@pytest.mark.filterwarnings("ignore:classes .* have no samples:UserWarning")     # the toy grid's fixed target
def test_the_subgroups_summary_logs_training_sizes_on_the_test_split_only():
    from distfair.evaluation.summaries.subgroups import Subgroups
    from distfair.testing.summaries import make_context

    # the contract's toy problem: 30 training samples, classes a, b, c x10, voice v1 x16 (i % 4 < 2), v2 x14
    metrics = Subgroups().summarize(make_context("test")).metrics
    assert metrics == {"group_train_n/half/x": 20.0, "group_train_n/half/y": 10.0,
                       "group_train_n/voice/v1": 16.0, "group_train_n/voice/v2": 14.0}
    assert Subgroups().summarize(make_context("val")).metrics == {}
    key = MetricKey.parse("group_train_n/voice/v1")
    assert (key.split, key.evaluation, key.family, key.fields) == ("test", None, "group_train_n",
                                                                   {"attribute": "voice", "group": "v1"})


# ------------------------------------------------------------------------ the correlation
SIZES = [100, 200, 300, 400]
AUC = [0.4, 0.3, 0.35, 0.1]
# by hand: dx = -150, -50, 50, 150; dy = .1125, .0125, .0625, -.1875; Sxy = -42.5, Sxx = 50000, Syy = .051875
R = -42.5 / math.sqrt(50000 * 0.051875)             # -0.8345
RHO = 1 - 6 * (9 + 0 + 0 + 9) / (4 * (16 - 1))       # ranks x 1..4, y 4,2,3,1: -0.8


def _metrics(sizes, aucs, attr="gender", shift=0.0, extra=None):
    groups = "abcdefgh"
    out = {f"group_train_n/{attr}/{groups[i]}": float(n) for i, n in enumerate(sizes)}
    out.update({f"group_auc_fpr/{attr}/{groups[i]}": v + shift for i, v in enumerate(aucs)})
    return {**out, **(extra or {})}


def _config(name, seeds, eps=0.0):
    params = {"defense.name": "waveform_at", "attack.eps": str(eps), "defense.sigma": "0.0", "model.name": "m5"}
    from distfair.defenses import DEFENSES

    return ConfigurationInput(run_id=f"id-{name}", name=name, params=params,
                              seeds=[SeedInput(seed=s, run_id=f"id-{name}-{s}", metrics=m) for s, m in seeds.items()],
                              defense=analysis.declared_traits(params, DEFENSES))


def test_pearson_spearman_and_fisher_interval_over_the_groups_by_hand():
    # two seeds, AUC_FPR shifted by +-0.05: the seed means are AUC
    config = _config("c1", {0: _metrics(SIZES, AUC, shift=0.05), 1: _metrics(SIZES, AUC, shift=-0.05)})
    result = analysis.analyze([config])
    [c] = result.representation
    assert (c.metric, c.attribute, c.name, c.pearson.n) == ("group_auc_fpr", "gender", "c1", 4)
    assert c.pearson.r == pytest.approx(R)
    assert (c.pearson.ci95_low, c.pearson.ci95_high) == (
        pytest.approx(math.tanh(math.atanh(R) - Z975 / math.sqrt(1)), abs=1e-6),
        pytest.approx(math.tanh(math.atanh(R) + Z975 / math.sqrt(1)), abs=1e-6))
    assert c.spearman_rho == pytest.approx(RHO)
    assert c.groups["a"] == {"train_n": 100.0, "value": pytest.approx(0.4)}
    # the only defined correlation of the analysis: Holm leaves its p as it is
    assert c.p_holm == pytest.approx(c.pearson.p) and result.n_holm == 1
    m = result.mlflow_metrics()
    assert m["train_size_r/group_auc_fpr/gender/id-c1"] == pytest.approx(R)
    assert m["train_size_spearman_rho/group_auc_fpr/gender/id-c1"] == pytest.approx(RHO)
    assert m["n_representation_correlations"] == 1
    doc = result.to_json()["representation"]
    assert doc["correlations"][0]["r"] == pytest.approx(R) and "§5.2.2" in doc["method"]


def test_pooled_attributes_mean_over_configurations_and_undefined_cases():
    a = _metrics(SIZES, AUC, extra=_metrics([10, 30, 20], [0.2, 0.1, 0.3], attr="accent"))
    b = _metrics([400, 300, 200, 100], AUC, extra=_metrics([5, 5, 5], [0.2, 0.1, 0.3], attr="accent"))
    c = _metrics([1, 2], [0.1, 0.2])                                  # two groups: no correlation
    result = analysis.analyze([_config("a", {0: a}), _config("b", {0: b}), _config("c", {0: c})])
    by = {(x.name, x.attribute): x for x in result.representation}
    assert by[("a", "gender")].pearson.r == pytest.approx(R)
    assert by[("b", "gender")].pearson.r == pytest.approx(-R)        # sizes reversed
    # accent of a: x 10, 30, 20; y .2, .1, .3 -> dx -10, 10, 0; dy 0, -.1, .1: Sxy = -1, Sxx = 200, Syy = .02
    assert by[("a", "accent")].pearson.r == pytest.approx(-1 / math.sqrt(200 * 0.02))
    assert by[("a", "accent")].pearson.ci95_low is None                  # 3 groups: no interval
    assert "constant" in by[("b", "accent")].pearson.undefined
    assert "only 2 point(s)" in by[("c", "gender")].pearson.undefined
    # all attributes of a together: 7 points
    pooled = by[("a", ALL_ATTRIBUTES)]
    xs, ys = SIZES + [10, 30, 20], AUC + [0.2, 0.1, 0.3]
    assert pooled.pearson.n == 7 and pooled.pearson.r == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]))
    spread = result.to_json()["representation"]["across_configurations"]["group_auc_fpr/gender"]
    assert spread["n"] == 2 and spread["mean"] == pytest.approx(0.0, abs=1e-12)
    assert spread["std"] == pytest.approx(math.sqrt(2 * R * R))        # sample std of (R, -R)
    text = output.format_representation(result)
    assert "§5.2.2" in text and "undefined" in text and f"{R:>7.3f}" in text


def test_representation_joins_the_one_holm_family_of_the_analysis():
    """Three configurations with fpr_parity/gender give intervention correlations too; every
    defined p (both kinds) is adjusted together: Holm by hand over the pooled list."""
    configs = []
    for i, (eps, parity) in enumerate(((0.0, 0.1), (0.01, 0.2), (0.1, 0.35))):
        aucs = [v + 0.01 * i for v in AUC]
        configs.append(_config(f"c{i}", {0: _metrics(SIZES, aucs, extra={"fpr_parity/gender": parity})}, eps=eps))
    result = analysis.analyze(configs)
    defined = [c for c in [*result.correlations, *result.representation] if c.pearson.p is not None]
    assert len(result.representation) == 3 and any(c.pearson.p is not None for c in result.correlations)
    ps = [c.pearson.p for c in defined]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    expected, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        expected[i] = running
    assert [c.p_holm for c in defined] == pytest.approx(expected)
    assert result.n_holm == m


def test_no_training_sizes_leaves_the_analysis_as_it_was():
    result = analysis.analyze([_config("c", {0: {"group_auc_fpr/gender/a": 0.1, "fpr_parity/gender": 0.1}})])
    assert result.representation == [] and output.format_representation(result) == ""
    assert "n_representation_correlations" not in result.mlflow_metrics()
    assert result.to_json()["representation"]["correlations"] == []


def test_written_files_include_the_representation_csv(tmp_path):
    config = _config("c1", {0: _metrics(SIZES, AUC)})
    files = output.write_outputs(analysis.analyze([config]), tmp_path, title="t")
    rows = files["representation_csv"].read_text().splitlines()
    assert rows[0].startswith("metric,attribute,run_id,name,r,")
    assert rows[1].startswith("group_auc_fpr,gender,id-c1,c1,") and "a:100:0.4;b:200:0.3" in rows[1]
    assert json.loads(files["json"].read_text())["representation"]["correlations"][0]["n"] == 4


# ---------------------------------------------------------------------- distfair analyze
def _seed_result(seed: int, sizes, aucs) -> dict:
    """A seed result shaped as ``SeedResult.to_dict()`` (cf. tests/test_analyze.py) whose summary
    metrics hold the groups' training-set sizes and AUC_FPRs (no confusion matrix: kept untested)."""
    from distfair.engine.train import metric_record

    clean = {"acc": 0.8}
    summary = {**_metrics(sizes, aucs), "fpr_parity/gender": max(aucs) - min(aucs)}
    return {"seed": seed, "metrics": {**metric_record(clean, []), **summary}, "confusion": {},
            "per_class_acc": {}, "history": [], "class_names": ["0", "1"], "final_model_path": None, "summaries": {},
            "checks": [], "flags_path": None, "evaluations": [], "eval_errors": {}, "tags": {}, "abstentions": {},
            "config": {}, "per_eval": {"clean": clean}, "val_per_eval": {}, "summary_metrics": {"test": summary},
            "timings": {}}


def test_analyze_command_prints_and_writes_the_representation_correlations(tmp_path, capfd):
    import distfair.evaluation.seed_figures as figures
    from distfair import cli, tracking
    from distfair.config import flatten

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    saved, figures.seed_figures = figures.seed_figures, lambda *a, **k: []
    try:
        exp = tracking.prepare_experiment(uri, "speech_rejection")
        for name, sizes in (("nr", SIZES), ("rs", SIZES[::-1])):
            cfg = {"defense": {"name": "neural_rejection"}, "model": {"name": "m5"}, "attack": {"eps": 0.0}}
            parent = tracking.start_parent_run(uri, exp, flatten(cfg), run_name=name)
            run_id = tracking.get_or_create_seed_run(uri, exp, parent, 0)
            tracking.SeedRunLogger(uri, run_id).log_result(_seed_result(0, sizes, AUC), title=f"{name}, seed 0")
    finally:
        figures.seed_figures = saved
    out_dir = tmp_path / "out"
    code = cli.main(["analyze", "--experiment", "speech_rejection", "--tracking-uri", uri, "--output-dir",
                     str(out_dir), "--json"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    rows = {c["name"]: c for c in doc["representation"]["correlations"]}
    assert rows["nr"]["r"] == pytest.approx(R) and rows["rs"]["r"] == pytest.approx(-R)
    assert rows["nr"]["spearman_rho"] == pytest.approx(RHO) and rows["nr"]["n"] == 4
    assert rows["nr"]["p_holm"] >= rows["nr"]["p"]
    assert "Training-set size |X_train,s|" in captured.err and f"{R:>7.3f}" in captured.err
    assert (out_dir / "representation.csv").is_file() and "representation_csv" in doc["files"]
