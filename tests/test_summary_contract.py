"""The evaluation-summary contract over every entry of ``SUMMARIES``.

The checks ship with the package (``distfair.testing.summaries``, run on any summary class, a
third party's too, on a toy grid of evaluations); this module runs each of them on each
registered summary, with its declared ``TEST_OPTIONS`` (a summary that needs options to run
declares some: a check fails until it does). Adding a summary to the registry adds it here.

The last tests show the point of the plug-in path: a summary defined here, registered for one
test, reaches the seed's metrics, its MLflow run (metric, artifact, figure) and its result
record, with no change to the training loop, the tracking layer or the plots.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from distfair.evaluation import summaries as registry
from distfair.evaluation.summaries import (SUMMARIES, Summary, SummaryOutput, check_summaries, nested_families,
                                           run_summaries)
from distfair.metrics import fairness_metrics
from distfair.testing import summaries as contract
from distfair.testing.summaries import ENTRIES, K, make_context

#: the fixed-target entry leaves its class's row out, which the metrics announce (as designed)
pytestmark = pytest.mark.filterwarnings("ignore:.*have no .*:UserWarning")
NAMES = list(SUMMARIES)
#: artifacts the core writes on every seed run: a summary's document must not replace one
CORE_ARTIFACTS = {"confusion_matrices.json", "per_class_acc.json", "result.json", "robust_flags.npz",
                  "configuration_result.json", "seed_summary.json"}


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


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
        assert nested_families()[next(iter(cls.families))] == next(iter(cls.families.values())) \
            if cls.families else True


def test_unknown_summary_and_unknown_option_are_named(name):
    assert check_summaries({"no_such_summary": {}}, ENTRIES)[0][0] == "eval.summaries.no_such_summary"
    options = dict(SUMMARIES[name].TEST_OPTIONS)
    problems = check_summaries({name: {**options, "no_such_option": 1}}, ENTRIES)
    assert [key for key, _ in problems] == [f"eval.summaries.{name}.no_such_option"]
    assert check_summaries({name: options}, ENTRIES) == []


# ----------------------------------------------------------------------- per-summary properties
@pytest.mark.parametrize("check", list(contract.CHECKS))
def test_contract(check, name, tmp_path):
    """``distfair.testing.summaries.<check>`` on the registered summary ``name``."""
    contract.CHECKS[check](SUMMARIES[name], tmp_path)


def test_a_third_party_summary_is_checked_by_the_same_contract(tmp_path):
    """A summary outside the registry runs through the same checks; one whose keys leave its
    declared families fails them."""
    class SaysWhatIsMissing(CleanMinusRobust):
        families: ClassVar = {"largest_acc_drop": (), "acc_drop": ()}

        def summarize(self, ctx):
            if "clean" not in ctx.entries:
                raise ValueError("acc_drop: needs the clean evaluation")
            return super().summarize(ctx)

        def figures(self, document, class_names, title, outdir):
            return [] if document is None else super().figures(document, class_names, title, outdir)

    contract.check_summary(SaysWhatIsMissing, tmp_path)

    class Undeclared(SaysWhatIsMissing):
        families: ClassVar = {"largest_acc_drop": ()}

    with pytest.raises(AssertionError, match="not declared in families"):
        contract.check_output_is_json_able_keyed_by_declared_families_and_finite_or_none(Undeclared, tmp_path)


def test_results_read_each_summary_through_its_view(monkeypatch):
    """``result.<summary>`` is that summary's ``view`` of its document; the base names none."""
    from distfair.evaluation.summaries import SummaryDocuments

    monkeypatch.setitem(registry.SUMMARIES, "acc_drop", CleanMinusRobust)
    result = SummaryDocuments()
    result.summaries = {"acc_drop": {"artifact": "acc_drop.json", "document": {"drops": {"p": 0.1}}},
                        "target_success": {"artifact": "target_success.json", "document": {"rates": {"every": []}}}}
    assert result.acc_drop == {"drops": {"p": 0.1}}
    assert result.target_success == {"every": []} and result.subgroups == {}
    with pytest.raises(AttributeError, match="no_such_summary"):
        result.no_such_summary


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
