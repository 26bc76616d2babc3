"""The versioned result records (issue 10, part 5): one JSON document per seed run and one per
configuration, readable with ``json`` alone, listing every metric MLflow shows, with the
meaning of each value in fields."""
from __future__ import annotations

import json

import jsonschema
import pytest
from mlflow.tracking import MlflowClient

from distfair import tracking
from distfair.results import record
from distfair.metrics import aggregate_seed_metrics


def test_rows_carry_split_evaluation_metric_and_nesting_as_fields():
    per_eval = {"clean": {"acc": 0.9, "group_acc/gender/F": 0.8, "tgt_max": None, "group_rejection/gender/M": 0.1},
                "aa": {"acc": 0.5, "group_gap/gender": 0.1, "stage_acc/apgd-ce": 0.6},
                "fgsm": {"acc": 0.6, "max_group_asym/half": 0.2}}
    rows = record.evaluation_rows("test", per_eval, "aa", step=3)
    by_key = {r["mlflow_key"]: r for r in rows}
    assert set(by_key) == {"clean_acc", "clean_group_acc/gender/F", "clean_tgt_max", "clean_group_rejection/gender/M",
                           "aa/robust_acc",
                           "aa/group_gap/gender", "aa/stage_acc/apgd-ce", "fgsm/robust_acc",
                           "fgsm/max_group_asym/half"}
    assert by_key["clean_group_acc/gender/F"] == {
        "split": "test", "evaluation": "clean", "metric": "group_acc", "attribute": "gender", "group": "F",
        "stage": None, "epoch": None, "step": 3, "value": 0.8, "mlflow_key": "clean_group_acc/gender/F",
        "mlflow_aliases": []}
    assert by_key["aa/robust_acc"]["metric"] == "acc" and by_key["aa/robust_acc"]["mlflow_aliases"] == ["robust_acc"]
    assert by_key["aa/stage_acc/apgd-ce"]["stage"] == "apgd-ce"
    assert [by_key["clean_group_rejection/gender/M"][f] for f in ("metric", "attribute", "group")] == [
        "group_rejection", "gender", "M"]
    assert by_key["aa/group_gap/gender"]["mlflow_aliases"] == ["group_gap/gender"]
    assert by_key["fgsm/max_group_asym/half"]["attribute"] == "half"
    assert by_key["fgsm/robust_acc"]["mlflow_aliases"] == []
    assert by_key["clean_tgt_max"]["value"] is None                      # undefined: a row, not logged
    val = {r["mlflow_key"]: r for r in record.evaluation_rows("val", {"clean": {"acc": 1.0}, "aa": {"acc": 0.4}},
                                                              "aa", step=3)}
    assert val["val_clean_acc"]["evaluation"] == "clean" and val["val_robust_acc"]["evaluation"] == "aa"
    curve = record.history_rows([{"epoch": 0, "train_loss": 1.0, "lr": 0.1, "val_robust_acc": 0.3}])
    assert [(r["split"], r["evaluation"], r["metric"], r["epoch"], r["mlflow_key"]) for r in curve] == [
        ("train", None, "loss", 0, "train_loss"), ("train", None, "lr", 0, "lr"),
        ("val", record.TRAIN_ATTACK, "acc", 0, "val_robust_acc")]


def _logged_seed(tiny_cfg_dict, tmp_path, uri, exp, parent, seed):
    from distfair.config import validate
    from distfair.engine import run_seed

    run_id = tracking.get_or_create_seed_run(uri, exp, parent, seed)
    logger = tracking.SeedRunLogger(uri, run_id)           # as the Ray worker does on rank 0
    result = run_seed(validate(tiny_cfg_dict, "tiny.yaml"), seed, workdir=tmp_path / f"w{seed}",
                      on_epoch=lambda epoch, row, _: logger.log_epoch(epoch, row)).to_dict()
    logger.log_result(result, title=f"syfar, seed {seed}")
    return result, run_id


@pytest.fixture
def subgroup_cfg(tiny_cfg_dict):
    tiny_cfg_dict["train"]["epochs"] = 2
    tiny_cfg_dict["eval"]["subgroups"] = {"half": {0: "a", 1: "a", 2: "b"}}
    return tiny_cfg_dict


def test_seed_record_loads_with_json_alone_and_lists_every_mlflow_metric(tmp_path, subgroup_cfg):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    result, run_id = _logged_seed(subgroup_cfg, tmp_path, uri, exp, parent, 0)
    client = MlflowClient(uri)

    path = client.download_artifacts(run_id, record.SEED_RECORD_NAME, str(tmp_path / "dl"))
    with open(path) as f:
        doc = json.load(f)                                    # json alone
    jsonschema.validate(doc, record.SEED_RECORD_SCHEMA)
    assert doc["schema_version"] == record.SCHEMA_VERSION and doc["kind"] == "seed" and doc["seed"] == 0
    assert doc["config"]["defense"]["name"] == "syfar" and doc["config"]["train"]["epochs"] == 2
    assert doc["class_names"] == result["class_names"] and doc["primary_evaluation"] == "pgd5"
    assert doc["confusion_matrices"]["test"] == result["confusion"]
    assert doc["per_class_acc"]["test"] == result["per_class_acc"]

    logged = [r for r in doc["values"] if r["value"] is not None]
    shown = client.get_run(run_id).data.metrics
    names = {k for r in logged for k in [r["mlflow_key"], *r["mlflow_aliases"]]}
    assert names == set(shown)
    assert record.latest_values(doc) == shown                 # the final values, exactly
    for key in {r["mlflow_key"] for r in logged}:             # and every point of every curve
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert points == sorted((r["step"], r["value"]) for r in logged if r["mlflow_key"] == key), key
    undefined = [r for r in doc["values"] if r["value"] is None and r["epoch"] is None]
    assert not {k for r in undefined for k in [r["mlflow_key"], *r["mlflow_aliases"]]} & set(shown)

    # the meaning is in fields: e.g. the primary attack's worst class on test, a subgroup, a curve
    wc = record.find_entry(doc, split="test", evaluation="pgd5", metric="worst_class_acc")
    assert wc["value"] == shown["worst_class_acc"] == shown["pgd5/worst_class_acc"]
    group = record.find_entry(doc, split="test", evaluation="fgsm", metric="group_acc", attribute="half", group="a")
    assert group["mlflow_key"] == "fgsm/group_acc/half/a" and group["value"] == shown["fgsm/group_acc/half/a"]
    val = record.find_entry(doc, split="val", evaluation="pgd5", metric="acc")
    assert val["mlflow_key"] == "val_robust_acc" and val["step"] == 2 and val["value"] == shown["val_robust_acc"]
    loss = record.find_entry(doc, split="train", metric="loss", epoch=1)
    assert loss["value"] == result["history"][1]["train_loss"]


def test_configuration_record_statistics_equal_the_parent_run(tmp_path, subgroup_cfg):
    from distfair.experiment.run import configuration_result

    subgroup_cfg["train"]["epochs"] = 1
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "e")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p")
    for seed in (0, 1, 2):
        _logged_seed(subgroup_cfg, tmp_path, uri, exp, parent, seed)
    # what run_configuration_with_tracking does after training
    per_seed = tracking.finished_seed_metrics(uri, exp, parent)
    summary = aggregate_seed_metrics([per_seed[s] for s in sorted(per_seed)])
    doc = configuration_result(uri, exp, parent, cfg=subgroup_cfg, seeds=[0, 1, 2, 3], errors={3: "boom"})
    tracking.log_parent_summary(uri, parent, summary, n_seeds=3, configuration_record=doc)

    client = MlflowClient(uri)
    with open(client.download_artifacts(parent, record.CONFIGURATION_RECORD_NAME, str(tmp_path / "dl"))) as f:
        loaded = json.load(f)
    jsonschema.validate(loaded, record.CONFIGURATION_RECORD_SCHEMA)
    assert loaded["seeds"] == [0, 1, 2] and loaded["errors"][0]["seed"] == 3
    assert "no result.json" in loaded["errors"][0]["error"]
    shown = client.get_run(parent).data.metrics
    summarised = [e for e in loaded["entries"] if e["parent_summary"]]
    covered = set()
    for entry in summarised:
        for key in [entry["mlflow_key"], *entry["mlflow_aliases"]]:
            covered.add(key)
            for stat in record.STATS:
                if entry[stat] is None:
                    assert f"{key}_{stat}" not in shown
                else:
                    assert shown[f"{key}_{stat}"] == pytest.approx(entry[stat], rel=1e-12, abs=1e-15), (key, stat)
    assert {k[:-len("_mean")] for k in shown if k.endswith("_mean")} == covered
    robust = record.find_entry(loaded, split="test", evaluation="pgd5", metric="acc")
    assert [v["seed"] for v in robust["seed_values"]] == [0, 1, 2] and robust["n"] == 3
    assert robust["mean"] == pytest.approx(summary["robust_acc"]["mean"])

    # the stability comparison builds its table with `distfair report` over these records:
    # its arguments are ones the command accepts
    import importlib.util
    from pathlib import Path

    from distfair.cli import build_parser

    script = Path(__file__).resolve().parent.parent / "scripts" / "stability_comparison.py"
    spec = importlib.util.spec_from_file_location("stability_comparison", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = build_parser().parse_args(module.report_args([parent], evaluation="pgd5", uri=uri,
                                                        output_dir=str(tmp_path / "report")))
    assert args.runs == [parent] and args.baseline == "pgd_at" and args.evaluations == ["pgd5"]
