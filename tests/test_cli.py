"""Command-line behaviour that needs no cluster: help texts and refusing bad input early."""
from __future__ import annotations

import pytest

from distfair import cli


def test_help_explains_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "MLflow" in out and "Ray" in out
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seeds", "--num-seeds", "--set", "--experiment", "--tracking-uri", "--address", "--json"):
        assert flag in out
    assert "exit codes" in out


@pytest.mark.parametrize("content, expected", [
    ("defense: {name: syfar}\ndataset: {name: digits}\nmodel: {name: digits_cnn}\nattack: {name: pgd, eps: 0.1}\n"
     "train: {lr: fast}\n", "train.lr: must be float"),
    ("defense: {name: nope}\ndataset: {name: digits}\nmodel: {name: digits_cnn}\n", "defense.name: unknown defense"),
    ("defense: {name: syfar}\ndataset: {name: digits}\nmodel: {name: digits_cnn}\nattack: {name: pgd, eps: -1}\n",
     "attack: eps must be >= 0"),
    ("defense: {name: syfar}\ndataset: {name: digits}\nmodel: {name: digits_cnn}\ntypo: 1\n", "typo: unknown top-level key"),
])
def test_bad_config_exits_2_naming_file_and_key_and_starts_nothing(tmp_path, monkeypatch, capsys, content, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and expected in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "distfair_runs").exists()


def test_bad_override_and_missing_file_exit_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: (file): cannot read" in capsys.readouterr().err
    path = tmp_path / "ok.yaml"
    path.write_text("defense: {name: standard}\ndataset: {name: digits}\nmodel: {name: digits_cnn}\n"
                    "eval: {attacks: [{name: p, attack: pgd, eps: 0.1}]}\n")
    assert cli.main(["run", str(path), "--set", "train.lr"]) == 2
    assert "expected key.path=value" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--set", "train.epochs=0"]) == 2
    assert "train.epochs: must be >= 1" in capsys.readouterr().err


def test_bad_seed_arguments_are_usage_errors(capsys):
    for argv in (["run", "x.yaml", "--seeds", "a,b"], ["run", "x.yaml", "--num-seeds", "0"],
                 ["run", "x.yaml", "--seeds", "1,1"], ["run", "x.yaml", "--seeds", "0", "--num-seeds", "2"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2


def test_table_formats_undefined_values():
    table = cli.format_table({"robust_acc": {"mean": 0.5, "std": None, "min": 0.5, "max": 0.5, "n": 1},
                              "tgt_max": {"mean": None, "std": None, "min": None, "max": None, "n": 0}}, [])
    assert "robust_acc" in table and "0.5000 ± —" in table and "tgt_max" in table


def test_format_table_lists_the_primary_subgroup_summaries():
    row = {"mean": 0.1, "std": 0.01, "min": 0.09, "max": 0.11, "n": 2}
    table = cli.format_table({"robust_acc": row, "group_gap/gender": row, "max_group_asym/gender": row,
                              "pgd/group_gap/gender": row, "group_acc/gender/F": row}, [])
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows == ["robust_acc", "group_gap/gender", "max_group_asym/gender"]


def test_format_table_lists_the_speech_summaries_when_present():
    row = {"mean": 0.1, "std": 0.01, "min": 0.09, "max": 0.11, "n": 2}
    table = cli.format_table({"clean_acc": row, "auc_fpr": row, "fpr_parity/gender": row, "fpr_parity/age": row,
                              "group_auc_fpr/age/slow": row, "clean_false_rejection_rate": row, "auc_acc": row,
                              "defense_parity/accent": row, "val_auc_fpr": row}, [])
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows == ["clean_acc", "auc_acc", "clean_false_rejection_rate", "auc_fpr", "defense_parity/accent",
                    "fpr_parity/age", "fpr_parity/gender"]


def test_json_safe_replaces_nan():
    assert cli._json_safe({"a": float("nan"), "b": [1.0, float("inf")]}) == {"a": None, "b": [1.0, None]}


def test_sweep_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--num-samples", "--num-seeds", "--max-concurrent", "--experiment", "--tracking-uri", "--address",
                 "--resume", "--json"):
        assert flag in out


@pytest.mark.parametrize("space, expected", [
    ("{params: {train.lr: {type: float, low: 5, high: 1}}, objective: {metric: val_robust_acc}}",
     "space.params.train.lr.low: must be <= high, got 5 > 1"),
    ("{params: {train.lr: {type: float, low: 0.01, high: 0.1}}, objective: {metric: nope}}",
     "space.objective.metric: unknown metric 'nope'"),
    ("{params: {train.lr: {type: float, low: 0.01, high: 0.1}}, objective: {metric: worst_class_acc}}",
     "space.objective.metric: 'worst_class_acc' is a test-set metric, and selection never sees the test set; "
     "use 'val_worst_class_acc'"),
    ("{params: {train.lr: {type: float, low: 0.01, high: 0.1}}, objective: {metric: val_robust_acc, stat: avg}}",
     "space.objective.stat: unknown stat 'avg'"),
    ("{params: {train.lrr: {type: float, low: 0.01, high: 0.1}}, objective: {metric: val_robust_acc}}",
     "space.params.train.lrr: does not address a config value"),
    ("{params: {train.lr: {type: float, low: -1, high: 0.1}}, objective: {metric: val_robust_acc}}",
     "space.params.train.lr: value -1 is not valid"),
])
def test_bad_sweep_file_exits_2_and_starts_nothing(tmp_path, monkeypatch, capsys, space, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad_sweep.yaml"
    path.write_text("defense: {name: syfar}\ndataset: {name: synthetic}\nmodel: {name: mlp}\n"
                    f"attack: {{name: pgd, eps: 0.1}}\nspace: {space}\n")
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {expected}" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "distfair_runs").exists()


def test_resume_without_an_earlier_sweep_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text("defense: {name: syfar}\ndataset: {name: synthetic}\nmodel: {name: mlp}\n"
                    "attack: {name: pgd, eps: 0.1}\n"
                    "space: {params: {train.lr: {type: float, low: 0.01, high: 0.1}}, objective: {metric: val_robust_acc}}\n")
    assert cli.main(["sweep", str(path), "--resume"]) == 2
    assert "--resume: no sweep named s-" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
