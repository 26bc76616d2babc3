"""Issue 27 §3 and §5: "unknown" is no subgroup by default, ``exclude`` and ``min_group_size``
(in samples or in speakers) leave groups out of the group metrics, gaps and parities, every
group's n is reported beside its accuracy and AUC, and intersectional groups. Hand values."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fake_faces import make_fake_faces
from torch.utils.data import TensorDataset

from distfair.config import ConfigError, check_structure, validate
from distfair.data import DataBundle
from distfair.evaluation import Predictions, entry_result, resolve_groupings, subgroup_report
from distfair.evaluation.summaries import SummaryContext
from distfair.evaluation.summaries.auc_acc import AccuracyAUC

#: 8 test samples of 2 classes
LABELS = [0, 0, 1, 1, 0, 0, 1, 1]
#: per-sample metadata, as the AudioMNIST / Common Voice loaders give it
AGE = ["20s", "20s", "20s", "30s", "30s", "30s", "unknown", "40s"]
SPEAKER = ["s1", "s1", "s2", "s3", "s3", "s4", "s5", "s6"]
GENDER = ["f", "f", "f", "m", "m", "m", "f", "m"]
ACCENT = ["us", "us", "uk", "us", "us", "uk", "unknown", "uk"]
#: per-sample correctness: 20s 2/3, 30s 1/3, unknown 1/1, 40s 1/1
CORRECT = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
COUNTS = np.array([[3, 1], [1, 3]])          # any 2x2 matrix of the 8 samples; per-sample groups ignore it


def bundle(**test_attributes) -> DataBundle:
    x = torch.zeros(len(LABELS), 2)
    data = TensorDataset(x, torch.tensor(LABELS))
    attrs = test_attributes or {"age": AGE, "speaker": SPEAKER, "gender": GENDER, "accent": ACCENT}
    return DataBundle(train=data, val=data, test=data, num_classes=2, in_shape=(2,), bounds=(0.0, 1.0),
                      class_names=["a", "b"], test_attributes=attrs)


def report(spec: dict, data: DataBundle | None = None, correct=CORRECT, included=None):
    groupings = resolve_groupings(spec, data or bundle())
    with pytest.warns(UserWarning, match="left out of the subgroup metrics") as caught:
        metrics, doc = subgroup_report(groupings, COUNTS, correct, ["a", "b"], included)
    return groupings, metrics, doc, [str(w.message) for w in caught]


# ----------------------------------------------------------------------- per-sample groups
def test_unknown_is_not_a_group_by_default():
    [grouping], metrics, doc, warned = report({"age": "metadata"})
    assert grouping.names == ["20s", "30s", "40s"]
    assert grouping.labels.tolist() == [0, 0, 0, 1, 1, 1, -1, 2]        # sample 6 ("unknown"): no group
    # 20s 2/3, 30s 1/3, 40s 1/1 -> gap 1 - 1/3; with "unknown" (1/1) as a group it would be the same
    # maximum, so the names and keys tell: no metric of the unknown group
    assert metrics["group_acc/age/20s"] == pytest.approx(2 / 3)
    assert metrics["group_gap/age"] == pytest.approx(2 / 3)
    assert not any("unknown" in key for key in metrics)
    assert doc["attributes"]["age"]["left_out"] == {"unknown": {"reason": "excluded", "size": 1}}
    assert any("'age'" in m and "unknown (excluded)" in m for m in warned)


def test_exclude_empty_list_keeps_unknown_and_the_list_works():
    [kept] = resolve_groupings({"age": {"source": "metadata", "exclude": []}}, bundle())
    assert kept.names == ["20s", "30s", "40s", "unknown"] and kept.left_out == {}
    [grouping], metrics, doc, _ = report({"age": {"source": "metadata", "exclude": ["UNKNOWN", "40s"]}})
    assert grouping.names == ["20s", "30s"]                              # matched case-insensitively
    # 20s 2/3, 30s 1/3 -> gap 1/3
    assert metrics["group_gap/age"] == pytest.approx(1 / 3)
    assert set(doc["attributes"]["age"]["left_out"]) == {"40s", "unknown"}


def test_a_one_sample_group_below_min_group_size_leaves_the_gap():
    [grouping], metrics, doc, warned = report({"age": {"source": "metadata", "min_group_size": 2}})
    # 40s has 1 sample < 2: left out. 20s 2/3, 30s 1/3 -> gap 1/3 (it was 1 - 1/3 with 40s at 1/1)
    assert grouping.names == ["20s", "30s"]
    assert metrics["group_gap/age"] == pytest.approx(1 / 3)
    assert "group_acc/age/40s" not in metrics and "group_n/age/40s" not in metrics
    assert doc["attributes"]["age"]["left_out"]["40s"] == {"reason": "min_group_size", "size": 1}
    assert any("40s (size 1 (samples) < min_group_size 2)" in m for m in warned)


def test_min_group_size_counts_speakers_with_size_by():
    # 20s: speakers s1, s2 (3 samples); 30s: s3, s4 (3 samples); 40s: s6 alone (1 sample)
    spec = {"age": {"source": "metadata", "min_group_size": 2, "size_by": "speaker"}}
    [grouping], metrics, doc, warned = report(spec)
    assert grouping.names == ["20s", "30s"] and grouping.sizes == {"20s": 2, "30s": 2}
    assert doc["attributes"]["age"]["left_out"]["40s"] == {"reason": "min_group_size", "size": 1}
    assert metrics["group_gap/age"] == pytest.approx(1 / 3)
    assert any("40s (size 1 (distinct speaker values) < min_group_size 2)" in m for m in warned)
    # 3 samples per group but 2 speakers: 3 speakers are more than either has
    [none_kept] = resolve_groupings({"age": {**spec["age"], "min_group_size": 3}}, bundle())
    assert none_kept.names == [] and (none_kept.labels == -1).all()


def test_each_group_reports_its_n_beside_its_accuracy():
    # a fixed-target evaluation leaves samples 2, 3 out: 20s keeps 2 (both correct), 30s keeps 2 (4 and 5 wrong)
    included = np.array([1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    _, whole, doc, _ = report({"age": "metadata"})
    _, part, _, _ = report({"age": "metadata"}, included=included)
    assert (whole["group_n/age/20s"], whole["group_n/age/30s"], whole["group_n/age/40s"]) == (3, 3, 1)
    assert doc["attributes"]["age"]["n"] == {"20s": 3, "30s": 3, "40s": 1}
    assert (part["group_n/age/20s"], part["group_n/age/30s"]) == (2, 2)
    assert part["group_acc/age/20s"] == pytest.approx(1.0) and part["group_acc/age/30s"] == pytest.approx(0.0)


# --------------------------------------------------------------------- parities and AUC_acc
def entry(name: str, eps: float, correct: list[int]):
    labels = torch.tensor(LABELS)
    preds = torch.where(torch.tensor(correct, dtype=torch.bool), labels, 1 - labels)
    return entry_result(name, Predictions(labels=labels, preds=preds), 2, None,
                        spec={"name": name, "attack": "pgd", "eps": eps})


def test_a_one_speaker_group_is_left_out_of_the_defense_parity():
    data = bundle(age=["20s"] * 4 + ["30s"] * 3 + ["60s"], speaker=["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s5"])
    spec = {"age": {"source": "metadata", "min_group_size": 2, "size_by": "speaker"}}
    e1 = entry("e1", 0.1, [1, 1, 1, 1, 1, 1, 0, 0])     # 20s 4/4, 30s 2/3, 60s 0/1
    e2 = entry("e2", 0.2, [1, 1, 0, 0, 1, 0, 0, 0])     # 20s 2/4, 30s 1/3, 60s 0/1
    ctx = SummaryContext(split="test", entries={"e1": e1, "e2": e2}, groupings=resolve_groupings(spec, data),
                         class_names=["a", "b"], num_classes=2, options={"entries": ["e1", "e2"]})
    out = AccuracyAUC().summarize(ctx)
    # AUC 20s = 0.1 * (1 + 1/2) / 2 = 0.075; 30s = 0.1 * (2/3 + 1/3) / 2 = 0.05; 60s (one speaker) = 0
    # parity over 20s and 30s = 0.025 (with 60s it would be 0.075)
    assert out.metrics["group_auc_acc/age/20s"] == pytest.approx(0.075)
    assert out.metrics["group_auc_acc/age/30s"] == pytest.approx(0.05)
    assert "group_auc_acc/age/60s" not in out.metrics
    assert out.metrics["defense_parity/age"] == pytest.approx(0.025)
    groups = out.document["attributes"]["age"]["groups"]
    assert groups["20s"]["n"] == [4, 4] and groups["30s"]["n"] == [3, 3]        # n beside each AUC
    assert out.document["attributes"]["age"]["left_out"] == {"60s": {"reason": "min_group_size", "size": 1}}
    # the overall AUC keeps every sample: all 6/8 then 3/8 -> 0.1 * (6/8 + 3/8) / 2
    assert out.metrics["auc_acc"] == pytest.approx(0.05625)


# ------------------------------------------------------------------------ class-level groups
COUNTS4 = np.array([[8, 2, 0, 0],    # class 0 (F): 10 samples
                    [1, 9, 0, 0],    # class 1 (M)
                    [0, 4, 6, 0],    # class 2 (unknown)
                    [0, 0, 2, 8]])   # class 3 (M)


def test_a_class_level_unknown_group_leaves_its_classes_out():
    data = dataclasses.replace(bundle(), num_classes=4, class_names=["a0", "a1", "b0", "b1"], test_attributes={},
                               class_attributes={"gender": ["F", "M", "unknown", "M"]})
    [grouping] = resolve_groupings({"gender": "metadata"}, data)
    assert grouping.kind == "class" and grouping.names == ["F", "M"] and grouping.labels.tolist() == [0, 1, -1, 1]
    with pytest.warns(UserWarning, match="unknown .excluded."):
        metrics, doc = subgroup_report([grouping], COUNTS4, None, data.class_names)
    # R = counts / 10. F = {0}: 0.8; M = {1, 3}: (0.9 + 0.8) / 2 = 0.85 -> gap 0.05
    # (with "unknown" = {2} at 0.6 as a group the gap would be 0.25)
    assert metrics["group_acc/gender/F"] == pytest.approx(0.8)
    assert metrics["group_acc/gender/M"] == pytest.approx(0.85)
    assert metrics["group_gap/gender"] == pytest.approx(0.05)
    # C_FM = (R01 + R03) / 2 = 0.1, C_MF = (R10 + R30) / 2 = 0.05 -> 0.05; rows keep their full
    # normalisation (class 1's row is still / 10 though nothing of it goes to class 2)
    assert metrics["max_group_asym/gender"] == pytest.approx(0.05)
    assert metrics["group_n/gender/F"] == 10 and metrics["group_n/gender/M"] == 20
    attr = doc["attributes"]["gender"]
    assert attr["group_asym"] == pytest.approx({"F|M": 0.05})
    assert np.allclose(attr["matrix"], [[0.8, 0.1], [0.05, (0.9 + 0 + 0 + 0.8) / 4]])
    assert attr["classes"] == {"F": ["a0"], "M": ["a1", "b1"]} and "unknown" in attr["left_out"]


# ---------------------------------------------------------------------------- intersections
def test_intersectional_groups_with_a_minimum_size():
    spec = {"gender_accent": {"intersect": ["gender", "accent"], "min_group_size": 2}}
    correct = np.array([1, 0, 1, 1, 1, 0, 1, 0], dtype=bool)
    [grouping], metrics, doc, _ = report(spec, correct=correct)
    # f|us: 0, 1; f|uk: 2 (1 sample < 2); m|us: 3, 4; m|uk: 5, 7; f|unknown: 6 (excluded)
    assert grouping.kind == "sample" and grouping.names == ["f|us", "m|uk", "m|us"]
    assert doc["attributes"]["gender_accent"]["left_out"] == {
        "f|uk": {"reason": "min_group_size", "size": 1}, "f|unknown": {"reason": "excluded", "size": 1}}
    # f|us 1/2, m|uk 0/2, m|us 2/2 -> gap 1
    assert metrics["group_acc/gender_accent/f_us"] == pytest.approx(0.5)
    assert metrics["group_acc/gender_accent/m_uk"] == pytest.approx(0.0)
    assert metrics["group_gap/gender_accent"] == pytest.approx(1.0)
    assert metrics["group_n/gender_accent/m_us"] == 2


def test_intersect_names_a_missing_attribute():
    with pytest.raises(ValueError, match=r"eval.subgroups.ga.intersect: the dataset has no attribute 'native'"):
        resolve_groupings({"ga": {"intersect": ["gender", "native"]}}, bundle())


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("entry_, key, fragment", [
    ({"source": "metadata", "min_group_size": 0}, "eval.subgroups.age.min_group_size", "must be a positive integer"),
    ({"source": "metadata", "min_group_size": "5"}, "eval.subgroups.age.min_group_size", "must be a positive integer"),
    ({"source": "metadata", "min_group_size": True}, "eval.subgroups.age.min_group_size", "must be a positive integer"),
    ({"source": "metadata", "exclude": "unknown"}, "eval.subgroups.age.exclude", "must be a list"),
    ({"source": "metadata", "size_by": ""}, "eval.subgroups.age.size_by", "'samples' or the name"),
    ({"source": "metadat"}, "eval.subgroups.age.source", "must be 'metadata'"),
    ({"source": "metadata", "min_size": 2}, "eval.subgroups.age.min_size", "unknown key; known: source"),
    ({"intersect": ["gender"]}, "eval.subgroups.age.intersect", "at least 2 distinct"),
    ({"intersect": ["gender", "gender"]}, "eval.subgroups.age.intersect", "at least 2 distinct"),
])
def test_option_errors_name_the_key(entry_, key, fragment):
    raw = {"defense": {"name": "syfar"}, "dataset": {"name": "synthetic", "num_samples": 60},
           "model": {"name": "mlp", "hidden": 8}, "attack": {"name": "pgd", "eps": 0.1, "steps": 2},
           "eval": {"subgroups": {"age": entry_}}}
    with pytest.raises(ConfigError) as info:
        check_structure(raw, "cfg.yaml")
    assert any(k == key and fragment in reason for k, reason in info.value.problems), info.value.problems


def face_config(root, subgroups: dict) -> dict:
    return {"defense": {"name": "pgd_at"}, "model": {"name": "mlp", "hidden": 8},
            "dataset": {"name": "faces", "root": str(root), "image_size": 8, "test_fraction": 0.25,
                        "val_fraction": 0.25},
            "attack": {"name": "pgd", "eps": 0.1, "steps": 2}, "eval": {"subgroups": subgroups}}


def test_the_options_form_resolves_with_its_defaults_and_a_bad_size_by_is_a_config_error(tmp_path):
    root = make_fake_faces(tmp_path / "faces", genders=("F", "M", "unknown", "M"), per_identity=8, size=8)
    cfg = validate(face_config(root, {"gender": {"source": "metadata", "min_group_size": 2}}), "faces.yaml")
    assert cfg["eval"]["subgroups"] == {"gender": {"source": "metadata", "exclude": ["unknown", ""],
                                                   "min_group_size": 2, "size_by": "samples"}}
    bare = validate(face_config(root, {"gender": "metadata"}), "faces.yaml")
    assert bare["eval"]["subgroups"] == {"gender": "metadata"}            # the bare word stays as written
    with pytest.raises(ConfigError) as info:
        validate(face_config(root, {"gender": {"source": "metadata", "size_by": "speaker"}}), "faces.yaml")
    assert info.value.problems == [("eval.subgroups.gender.size_by",
                                    "the dataset has no per-sample attribute 'speaker'; per-sample attributes: none")]
