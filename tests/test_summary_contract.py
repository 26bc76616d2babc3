"""Properties every registered evaluation summary must have, run over every entry of ``SUMMARIES``.

Adding a summary to the registry adds it here. A summary that needs options to run gets an
example in ``EXAMPLE_OPTIONS`` (a test fails until it has one). The shared fixture is one
small model and dataset evaluated clean, under an FGSM budget grid, toward a fixed target and
toward every target, with a class-level and a per-sample attribute, with the default
predictor and with one that abstains.

The last tests show the point of the plug-in path: a summary defined here, registered for one
test, reaches the seed's metrics, its MLflow run (metric, artifact, figure) and its result
record, with no change to the training loop, the tracking layer or the plots.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distfair.data import DataBundle
from distfair.evaluation import ABSTAIN, Predictor, build_eval_attack, entry_result, predict_dataset, resolve_groupings
from distfair.evaluation import summaries as registry
from distfair.evaluation.summaries import (SUMMARIES, Summary, SummaryContext, SummaryOutput, check_summaries,
                                           nested_families, run_summaries)
from distfair.metrics import fairness_metrics

#: the fixed-target entry leaves its class's row out, which the metrics announce (as designed)
pytestmark = pytest.mark.filterwarnings("ignore:.*have no .*:UserWarning")
NAMES = list(SUMMARIES)
CPU = torch.device("cpu")
K = 3
ENTRIES = [{"name": "fgsm_small", "attack": "fgsm", "eps": 0.05},
           {"name": "fgsm_large", "attack": "fgsm", "eps": 0.3},
           {"name": "to_a", "attack": "fgsm", "eps": 0.2, "target": "a"},
           {"name": "every", "attack": "fgsm", "eps": 0.2, "target": "every"}]
#: options for the summaries that need some (those not run by default or with required options)
EXAMPLE_OPTIONS = {"auc_acc": {"entries": ["fgsm_small", "fgsm_large"]}}
#: artifacts the core writes on every seed run: a summary's document must not replace one
CORE_ARTIFACTS = {"confusion_matrices.json", "per_class_acc.json", "result.json", "robust_flags.npz",
                  "configuration_result.json", "seed_summary.json"}


class AbstainAboveHalf(Predictor):
    """Rejects by thresholding its score (the rejection summaries sweep the threshold)."""
    can_abstain = True
    reject_rule = "below"
    threshold = 0.5

    def __call__(self, model, x):
        logits = model(x)
        pred = logits.argmax(dim=1)
        score = logits.softmax(1).amax(1)
        return torch.where(score < self.threshold, torch.full_like(pred, ABSTAIN), pred), score


def problem() -> tuple[nn.Module, DataBundle]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=g)
    y = torch.arange(30) % K
    x[torch.arange(30), y] += 0.4                       # mostly separable, some errors
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, K))
    torch.manual_seed(0)
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(8, 4) * 3)
        model[0].bias.zero_()
        model[2].weight.copy_(torch.eye(K, 8))
        model[2].bias.zero_()
    data = TensorDataset(x.clamp(0, 1), y)
    voice = ["v1" if i % 4 < 2 else "v2" for i in range(30)]
    bundle = DataBundle(train=data, val=data, test=data, num_classes=K, in_shape=(4,), bounds=(0.0, 1.0),
                        class_names=["a", "b", "c"], test_attributes={"voice": voice},
                        val_attributes={"voice": voice})
    return model.eval(), bundle


def make_context(split: str = "test", *, abstain: bool = False, drop: str | None = None,
                 options: dict | None = None) -> SummaryContext:
    model, data = problem()
    predictor = AbstainAboveHalf() if abstain else None
    entries = {"clean": entry_result("clean", predict_dataset(model, data.test, K, device=CPU, batch_size=7,
                                                              predictor=predictor), K, None)}
    for i, spec in enumerate(ENTRIES):
        attack, target = build_eval_attack(spec, data)
        pred = predict_dataset(model, data.test, K, device=CPU, batch_size=7, attack=attack, target=target,
                               generator=torch.Generator().manual_seed(i), predictor=predictor)
        entries[spec["name"]] = entry_result(spec["name"], pred, K, target, spec=spec, attack=attack)
    entries.pop(drop, None)
    groupings = resolve_groupings({"half": {"a": "x", "b": "x", "c": "y"}, "voice": "metadata"}, data)
    with_model = split == "test"
    return SummaryContext(split=split, entries=entries, groupings=groupings, class_names=list(data.class_names),
                          num_classes=K, options=dict(options or {}), model=model if with_model else None,
                          data=data if with_model else None, device=CPU if with_model else None, batch_size=7)


def options_of(name: str) -> dict:
    return copy.deepcopy(EXAMPLE_OPTIONS.get(name, {}))


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def _keys_follow_families(cls: type[Summary], metrics: dict) -> None:
    for key in metrics:
        family, *fields = key.split("/")
        assert family in cls.families, f"{cls.name}: metric {key!r}: family {family!r} not declared in families"
        assert len(fields) == len(cls.families[family]), f"{cls.name}: {key!r} does not nest what its family declares"
        assert all(fields), f"{cls.name}: {key!r} has an empty field"


def _values_are_numbers_or_none(metrics: dict) -> None:
    for key, value in metrics.items():
        assert value is None or (isinstance(value, float) and math.isfinite(value)), f"{key}: {value!r}"


# ------------------------------------------------------------------------- registry-level rules
def test_every_summary_declares_what_the_contract_needs():
    artifacts = [cls.artifact for cls in SUMMARIES.values() if cls.artifact]
    assert len(artifacts) == len(set(artifacts)), "two summaries write the same artifact"
    assert not set(artifacts) & CORE_ARTIFACTS
    families = [f for cls in SUMMARIES.values() for f in cls.families]
    assert len(families) == len(set(families)), "two summaries declare the same metric family"
    core = set(fairness_metrics(torch.eye(K, dtype=torch.long) * 5)) | {"acc", "rejection_rate",
                                                                         "false_rejection_rate", "stage_acc"}
    assert not set(families) & core, "a summary's family would shadow a core metric of an evaluation"
    for name, cls in SUMMARIES.items():
        assert cls.name == name, f"registry key {name!r} != {cls.__name__}.name {cls.name!r}"
        assert set(cls.splits) <= {"val", "test"} and cls.splits
        assert not (cls.needs_model and "val" in cls.splits), f"{name}: the model is only given on the test split"
        if check_summaries({name: {}}, ENTRIES):
            assert name in EXAMPLE_OPTIONS, f"{name} needs options: add an example to EXAMPLE_OPTIONS"
        assert nested_families()[next(iter(cls.families))] == next(iter(cls.families.values())) \
            if cls.families else True


def test_unknown_summary_and_unknown_option_are_named(name):
    assert check_summaries({"no_such_summary": {}}, ENTRIES)[0][0] == "eval.summaries.no_such_summary"
    problems = check_summaries({name: {**options_of(name), "no_such_option": 1}}, ENTRIES)
    assert [key for key, _ in problems] == [f"eval.summaries.{name}.no_such_option"]
    assert check_summaries({name: options_of(name)}, ENTRIES) == []


# ----------------------------------------------------------------------- per-summary properties
@pytest.mark.parametrize("abstain", [False, True])
def test_output_is_json_able_keyed_by_declared_families_and_finite_or_none(name, abstain):
    cls = SUMMARIES[name]
    for split in cls.splits:
        out = cls().summarize(make_context(split, abstain=abstain, options=options_of(name)))
        assert isinstance(out, SummaryOutput)
        ctx_entries = set(make_context(split).entries)
        assert set(out.entry_metrics) <= ctx_entries
        for metrics in [out.metrics, *out.entry_metrics.values()]:
            _keys_follow_families(cls, metrics)
            _values_are_numbers_or_none(metrics)
        json.dumps(out.document, allow_nan=False)
        json.dumps(out.findings, allow_nan=False)
        for finding in out.findings:
            assert set(finding) == {"check", "message"} and finding["message"]
        if cls.artifact is None:
            assert out.document is None


def test_inputs_model_and_its_mode_are_untouched(name):
    cls = SUMMARIES[name]
    ctx = make_context(options=options_of(name))
    before = copy.deepcopy([(n, dataclasses.asdict(e.predictions), e.counts.clone(), dict(e.metrics),
                             None if e.included is None else e.included.copy()) for n, e in ctx.entries.items()])
    params = [p.detach().clone() for p in ctx.model.parameters()]
    ctx.model.train()
    cls().summarize(ctx)
    assert ctx.model.training
    assert all(torch.equal(a, b) for a, b in zip(params, ctx.model.parameters()))
    assert all(p.grad is None for p in ctx.model.parameters())
    after = [(n, dataclasses.asdict(e.predictions), e.counts, e.metrics, e.included) for n, e in ctx.entries.items()]
    for (n, pred, counts, metrics, included), (_, pred2, counts2, metrics2, included2) in zip(before, after):
        assert all(torch.equal(v, pred2[k]) if isinstance(v, torch.Tensor) else v == pred2[k]
                   for k, v in pred.items() if not isinstance(v, dict)), n
        assert torch.equal(counts, counts2) and metrics == metrics2, n
        assert (included is None and included2 is None) or np.array_equal(included, included2)


def test_deterministic(name):
    cls = SUMMARIES[name]
    a = cls().summarize(make_context(options=options_of(name)))
    b = cls().summarize(make_context(options=options_of(name)))
    assert json.dumps(dataclasses.asdict(a), sort_keys=True) == json.dumps(dataclasses.asdict(b), sort_keys=True)


def test_figures_come_from_the_json_document_alone(name, tmp_path):
    cls = SUMMARIES[name]
    out = cls().summarize(make_context(options=options_of(name)))
    document = json.loads(json.dumps(out.document))           # what the artifact holds
    paths = cls().figures(document, ["a", "b", "c"], f"{name} test", tmp_path)
    for path in paths:
        assert Path(path).parent == tmp_path and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len({Path(p).name for p in paths}) == len(paths)
    assert cls().figures(None, ["a", "b", "c"], "none", tmp_path / "none") == []


def test_a_failed_evaluation_is_absent_not_fatal_or_the_summary_says_why(name):
    """With the clean pass or one grid entry missing (it failed), a summary either reports on
    what is there or raises an error whose message names what is missing."""
    cls = SUMMARIES[name]
    for missing in ("clean", "fgsm_large"):
        ctx = make_context(drop=missing, options=options_of(name))
        try:
            out = cls().summarize(ctx)
        except ValueError as err:
            assert missing in str(err)
            continue
        assert missing not in out.entry_metrics


def test_run_summaries_records_a_failing_summary_and_runs_the_others(monkeypatch):
    class Broken(Summary):
        name = "broken"
        artifact = "broken.json"

        def summarize(self, ctx):
            raise RuntimeError("boom")

    monkeypatch.setitem(registry.SUMMARIES, "broken", Broken)
    ctx = make_context()
    failures = {}
    added, metrics, documents, _ = run_summaries(lambda o: dataclasses.replace(ctx, options=o), None, "test",
                                                 failed=lambda n, e: failures.update({n: str(e)}))
    assert failures == {"summaries.broken": "boom"}
    assert "subgroups" in documents and "group_gap/half" in added["clean"]


# ------------------------------------------------------ a new summary: one class, one registry line
class CleanMinusRobust(Summary):
    """Toy cross-evaluation summary: clean accuracy minus each attacked accuracy, per entry,
    and the largest such drop over all entries."""
    name = "acc_drop"
    artifact = "acc_drop.json"
    splits = ("val", "test")
    families: ClassVar = {"largest_acc_drop": (), "acc_drop": ("attribute",)}

    def summarize(self, ctx):
        clean = ctx.entries["clean"].metrics["acc"]
        drops = {n: clean - e.metrics["acc"] for n, e in ctx.entries.items() if n != "clean"}
        return SummaryOutput(entry_metrics={n: {"acc_drop": d} for n, d in drops.items()},
                             metrics={"largest_acc_drop": max(drops.values())}, document={"drops": drops})

    def figures(self, document, class_names, title, outdir):
        from distfair.plotting import group_bars
        return [group_bars({"drop": document["drops"]}, title, Path(outdir) / "acc_drop.png")]


def test_a_new_summary_reaches_metrics_mlflow_and_the_record_without_touching_anything_else(
        tmp_path, monkeypatch, tiny_cfg_dict, seed_figures):
    from mlflow.tracking import MlflowClient

    from distfair import tracking
    from distfair.results import record
    from distfair.config import validate
    from distfair.engine.train import run_seed

    monkeypatch.setitem(registry.SUMMARIES, "acc_drop", CleanMinusRobust)
    tiny_cfg_dict["train"]["epochs"] = 1
    tiny_cfg_dict["eval"]["summaries"] = {"acc_drop": None}
    cfg = validate(tiny_cfg_dict, "t.yaml")
    result = run_seed(cfg, 0, workdir=tmp_path / "w")
    m = result.metrics
    drop = m["clean_acc"] - m["pgd5/robust_acc"]
    assert m["pgd5/acc_drop"] == pytest.approx(drop) and m["acc_drop"] == pytest.approx(drop)   # primary bare too
    assert m["largest_acc_drop"] == pytest.approx(max(drop, m["clean_acc"] - m["fgsm/robust_acc"]))
    assert m["val_largest_acc_drop"] == pytest.approx(m["val_clean_acc"] - m["val_robust_acc"])
    assert result.document("acc_drop") == {"drops": {"pgd5": pytest.approx(drop), "fgsm": pytest.approx(
        m["clean_acc"] - m["fgsm/robust_acc"])}}

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.prepare_experiment(uri, "summaries")
    parent = tracking.start_parent_run(uri, experiment, {}, run_name="p")
    run_id = tracking.get_or_create_seed_run(uri, experiment, parent, 0)
    tracking.SeedRunLogger(uri, run_id).log_result(result.to_dict(), title="toy, seed 0")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.metrics["largest_acc_drop"] == pytest.approx(m["largest_acc_drop"])
    assert run.data.metrics["val_largest_acc_drop"] == pytest.approx(m["val_largest_acc_drop"])
    assert run.data.metrics["fgsm/acc_drop"] == pytest.approx(m["fgsm/acc_drop"])
    files = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"acc_drop.json", "plots/acc_drop.png"} <= files
    doc = json.load(open(client.download_artifacts(run_id, "result.json", str(tmp_path))))
    assert doc["summaries"]["acc_drop"]["artifact"] == "acc_drop.json"
    assert record.find_entry(doc, split="test", evaluation=None, metric="largest_acc_drop")["value"] == \
        pytest.approx(m["largest_acc_drop"])
    row = record.find_entry(doc, split="test", evaluation="fgsm", metric="acc_drop")
    assert row["mlflow_key"] == "fgsm/acc_drop"
    assert record.find_entry(doc, split="val", evaluation=None, metric="largest_acc_drop")["mlflow_key"] == \
        "val_largest_acc_drop"
    # every metric MLflow shows is a row of the record
    assert set(run.data.metrics) <= set(record.latest_values(doc))
