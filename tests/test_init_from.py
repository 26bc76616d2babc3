"""Fine-tuning from an earlier run (train.init_from): the checkpoint round trip, the
architecture checks, and resolving MLflow run ids to per-seed checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
from mlflow.tracking import MlflowClient

from distfair import cli, tracking
from distfair.config import validate
from distfair.engine import run_seed
from distfair.engine.train import CHECKPOINT_NAME, load_initial_weights
from distfair.models import build_model


@pytest.fixture
def trained(tiny_cfg_dict, tmp_path):
    cfg = validate(tiny_cfg_dict, "tiny.yaml")
    run_seed(cfg, 0, workdir=tmp_path / "pre")
    return cfg, tmp_path / "pre" / CHECKPOINT_NAME


def test_weights_round_trip_and_fine_tuning_starts_from_them(trained, tmp_path):
    cfg, path = trained
    model = build_model("mlp", num_classes=3, in_shape=(6,), hidden=16)
    load_initial_weights(model, path, model_name="mlp", num_classes=3)
    saved = torch.load(path, weights_only=False)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    logs = []
    result = run_seed(cfg, 1, workdir=tmp_path / "ft", init_from=path, log=logs.append)
    assert result is not None and any("initialised from" in line for line in logs)
    fresh = run_seed(cfg, 1, workdir=tmp_path / "fresh")
    assert result.history[0]["train_loss"] != fresh.history[0]["train_loss"]    # not a fresh init


def test_mismatched_checkpoints_are_refused_with_a_reason(trained, tmp_path):
    _, path = trained
    with pytest.raises(ValueError, match="is a 'mlp' model, this run trains 'digits_cnn'"):
        load_initial_weights(build_model("digits_cnn", num_classes=3, in_shape=(1, 8, 8)), path,
                             model_name="digits_cnn", num_classes=3)
    with pytest.raises(ValueError, match="has 3 classes, this run's data has 10"):
        load_initial_weights(build_model("mlp", num_classes=10, in_shape=(6,)), path, model_name="mlp",
                             num_classes=10)
    with pytest.raises(ValueError, match="different shapes"):
        load_initial_weights(build_model("mlp", num_classes=3, in_shape=(6,), hidden=32), path, model_name="mlp",
                             num_classes=3)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_initial_weights(build_model("mlp", num_classes=3, in_shape=(6,)), tmp_path / "nope.pt",
                             model_name="mlp", num_classes=3)


def _run_with_checkpoint(client, exp, parent, seed, content: bytes, tmp_path):
    run_id = tracking.get_or_create_seed_run(client.tracking_uri, exp, parent, seed)
    src = tmp_path / f"src{seed}"
    src.mkdir()
    (src / "last.pt").write_bytes(content)
    client.log_artifact(run_id, str(src / "last.pt"), "checkpoint")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_run_ids_resolve_to_per_seed_checkpoints(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare_experiment(uri, "pre")
    client = MlflowClient(uri)
    parent = tracking.start_parent_run(uri, exp, {}, run_name="pgd_at")
    seed_runs = {s: _run_with_checkpoint(client, exp, parent, s, f"seed{s}".encode(), tmp_path) for s in (0, 1)}
    dest = tmp_path / "dl"
    by_config = tracking.seed_checkpoints(uri, parent, [0, 1], dest)          # same seed -> same seed
    assert {s: p.read_bytes() for s, p in by_config.items()} == {0: b"seed0", 1: b"seed1"}
    by_seed_run = tracking.seed_checkpoints(uri, seed_runs[1], [0, 1, 2], dest)  # one run -> every seed
    assert {p.read_bytes() for p in by_seed_run.values()} == {b"seed1"} and len(by_seed_run) == 3
    with pytest.raises(ValueError, match=r"no finished seed run for seeds \[2\]"):
        tracking.seed_checkpoints(uri, parent, [0, 2], dest)
    with pytest.raises(ValueError, match="neither a file nor a run"):
        tracking.seed_checkpoints(uri, "0" * 32, [0], dest)


def test_cli_refuses_an_unresolvable_init_from_before_starting(tmp_path, monkeypatch, capsys, tiny_cfg_dict,
                                                               write_config):
    monkeypatch.chdir(tmp_path)
    data = copy.deepcopy(tiny_cfg_dict)
    data["train"]["init_from"] = str(tmp_path / "missing.pt")
    path = write_config(data)
    assert cli.main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "train.init_from" in capsys.readouterr().err
    assert not (tmp_path / "distfair_runs").exists()
