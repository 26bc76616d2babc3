"""A diverging run (issue 15): the loss turning NaN or infinite is detected on the device
(``distfair.engine.steps``: no host read per step, one read per epoch, one all-reduce under
DDP), reported as ``loss is nan at epoch e, batch b`` (1-based), and fails its seed alone: the
seed's run ends FAILED with the reason, its siblings in the same worker group go on, the
configuration's statistics are over the finished seeds with ``n_failed``, and a sweep records
the configuration as failed (never chosen) and goes on.

The divergence is deterministic per seed: ``tests/toy_defenses.py``'s ``toy_diverging``
(standard training whose loss turns NaN at a given epoch and batch for one seed).
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import toy_defenses
from conftest import TINY
from distfair.config import validate
from distfair.defenses import DEFENSES
from distfair.defenses.standard import Standard
from distfair.engine import run_seed
from distfair.engine.steps import Diverged, StepTotals, run_steps
from distfair.engine.train import CHECKPOINT_NAME



@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    """The toy defense in this process's registry while a test runs (the driver validates
    configurations naming it), never at collection: other modules list the registry then."""
    monkeypatch.setitem(DEFENSES, toy_defenses.DIVERGING, toy_defenses.Diverging)


# ------------------------------------------------------------------ on-device step totals
class _Counted(Standard):
    """Standard training that also logs ``odd``, on every other step only (a number absent
    from a step counts 0 there, as the engine always averaged)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def loss(self, model, x, y, *, generator=None):
        loss, parts = super().loss(model, x, y, generator=generator)
        self.calls += 1
        if self.calls % 2:
            parts["odd"] = 2 * loss.detach()
        return loss, parts


def _tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(5)]
    return model, batches


def test_epoch_means_equal_the_per_batch_float_average():
    """The device sums read once equal, exactly, the per-step ``float()`` average the engine
    used to compute (the same float64 additions in the same order)."""
    model, batches = _tiny_problem()
    by_hand_model = copy.deepcopy(model)
    means = run_steps(_Counted(num_classes=3), model, batches, torch.optim.SGD(model.parameters(), lr=0.5),
                      epoch=0, device=torch.device("cpu"))

    optimizer = torch.optim.SGD(by_hand_model.parameters(), lr=0.5)
    sums = {"loss": 0.0, "clean_ce": 0.0, "odd": 0.0}
    for i, (x, y) in enumerate(batches):
        loss = F.cross_entropy(by_hand_model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sums["loss"] += float(loss.detach())
        sums["clean_ce"] += float(loss.detach())
        sums["odd"] += float(2 * loss.detach()) if i % 2 == 0 else 0.0
    assert means == {k: v / len(batches) for k, v in sums.items()}
    assert list(means) == ["loss", "clean_ce", "odd"]


def test_the_first_non_finite_value_is_found_in_device_code():
    totals = StepTotals(torch.device("cpu"), ("generator_loss", "loss"))
    one, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    totals.add({"loss": one, "generator_loss": one, "other": nan})      # an unwatched NaN is only logged
    totals.add({"loss": -inf, "generator_loss": nan})                    # same batch: the generator first
    totals.add({"loss": nan, "generator_loss": nan})
    with pytest.raises(Diverged, match=r"^generator_loss is nan at epoch 4, batch 2$") as err:
        totals.finish(epoch=3)
    assert (err.value.epoch, err.value.batch, err.value.quantity, err.value.kind) == (4, 2, "generator_loss", "nan")

    totals = StepTotals(torch.device("cpu"))
    totals.add({"loss": one})
    totals.add({"loss": -inf})
    with pytest.raises(Diverged, match=r"^loss is -inf at epoch 1, batch 2$"):
        totals.finish(epoch=0)
    assert StepTotals(torch.device("cpu")).finish(epoch=0) == {}


def _ddp_rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        totals = StepTotals(torch.device("cpu"))
        bad = {1: (2, float("nan")), 0: (4, float("inf"))}[rank]        # rank 1 diverges first
        for b in range(6):
            totals.add({"loss": torch.tensor(bad[1] if b >= bad[0] else 0.5)})
        try:
            totals.finish(epoch=0, world=world)
            message = "no error"
        except Diverged as err:
            message = str(err)
        Path(out, f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def test_under_ddp_every_rank_raises_the_earliest_divergence_of_any_rank(tmp_path):
    """One all-reduce (MIN) at the epoch's end: both ranks raise the same error, none is left
    waiting in a collective (each rank on its own would name its own batch or none)."""
    import torch.multiprocessing as mp

    # forked, not spawned: nothing to import again (a spawned rank re-imports torch and distfair)
    mp.start_processes(_ddp_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="fork")
    said = {p.name: p.read_text() for p in tmp_path.glob("rank*.txt")}
    assert said == {"rank0.txt": "loss is nan at epoch 1, batch 3", "rank1.txt": "loss is nan at epoch 1, batch 3"}


# ---------------------------------------------------------------------------- the engine
def _toy_cfg(nan_seed: int, *, epochs: int = 2, nan_epoch: int = 2, nan_batch: int = 3) -> dict:
    raw = copy.deepcopy(TINY)
    raw["defense"] = {"name": toy_defenses.DIVERGING, "nan_seed": nan_seed, "nan_epoch": nan_epoch,
                      "nan_batch": nan_batch}
    raw["train"]["epochs"] = epochs
    raw["eval"] = {"attacks": [{"name": "fgsm", "attack": "fgsm"}]}
    return raw


def test_a_diverging_seed_names_epoch_and_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = validate(_toy_cfg(nan_seed=3), "toy.yaml")
    with pytest.raises(Diverged, match=r"^loss is nan at epoch 2, batch 3$"):
        run_seed(cfg, 3, workdir=tmp_path / "s3")
    # the epoch that diverged wrote no checkpoint: the last one is epoch 1's (0-based 0)
    assert torch.load(tmp_path / "s3" / CHECKPOINT_NAME, weights_only=False)["epoch"] == 0
    other = run_seed(cfg, 4, workdir=tmp_path / "s4")                  # the same file, another seed
    assert [row["epoch"] for row in other.history] == [0, 1]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in other.history)


# ----------------------------------------------------------------------------- real Ray
@pytest.fixture
def ray_with_toy(ray_instance):
    """The session's local Ray instance, whose workers register the toy defenses (setup hook;
    ``tests/conftest.py``)."""
    return ray_instance


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, {role: [r for r in runs if r.data.tags.get("distfair.role") == role]
                    for role in ("sweep", "configuration", "seed")}


@pytest.mark.ray
def test_a_diverging_seed_fails_alone_in_its_worker_group(ray_with_toy, tmp_path, capfd):
    from distfair import cli

    raw = _toy_cfg(nan_seed=1)
    raw["seeds"] = [0, 1, 2]
    raw["scaling"]["max_concurrent_seeds"] = 1                   # one worker group runs the three seeds
    path = tmp_path / "div.yaml"
    path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = cli.main(["run", str(path), "--experiment", "div", "--tracking-uri", uri,
                     "--storage-path", str(tmp_path / "storage"), "--json"])
    out = capfd.readouterr()        # --json: the JSON object on fd 1, the rest on fd 2
    assert code == 1, out.err[-3000:]
    assert "seed 1 FAILED: loss is nan at epoch 2, batch 3" in out.out + out.err

    client, runs = _runs(uri, "div")
    seeds = {int(r.data.tags["distfair.seed"]): r for r in runs["seed"]}
    assert {s: r.info.status for s, r in seeds.items()} == {0: "FINISHED", 1: "FAILED", 2: "FINISHED"}
    assert seeds[1].data.tags["distfair.failure_reason"] == "loss is nan at epoch 2, batch 3"
    # its first epoch was logged before it diverged; the seed after it in the group trained both
    assert [m.step for m in client.get_metric_history(seeds[1].info.run_id, "train_loss")] == [0]
    assert sorted(m.step for m in client.get_metric_history(seeds[2].info.run_id, "train_loss")) == [0, 1]

    (parent,) = runs["configuration"]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["n_failed"] == 1 and parent.data.metrics["n_seeds"] == 2
    finished = [seeds[s].data.metrics["clean_acc"] for s in (0, 2)]
    assert parent.data.metrics["clean_acc_mean"] == pytest.approx(sum(finished) / 2)
    assert parent.data.tags["distfair.failure_reason"] == "seed 1: loss is nan at epoch 2, batch 3"
    note = parent.data.tags["mlflow.note.content"]
    assert "2 of 3 seeds finished" in note and "- seed 1: loss is nan at epoch 2, batch 3" in note
    record = json.loads(Path(client.download_artifacts(parent.info.run_id, "configuration_result.json",
                                                       str(tmp_path))).read_text())
    assert record["errors"] == [{"seed": 1, "error": "loss is nan at epoch 2, batch 3"}]
    assert not [r for rs in runs.values() for r in rs if r.info.status in ("RUNNING", "SCHEDULED")]


@pytest.mark.ray
def test_a_sweep_marks_a_diverging_configuration_failed_and_goes_on(ray_with_toy, tmp_path, capfd):
    from distfair import cli

    raw = _toy_cfg(nan_seed=0, nan_epoch=1, nan_batch=2)
    raw["seeds"] = [0]
    raw["train"]["epochs"] = 1
    raw["space"] = {"params": {"defense.nan_seed": {"grid": [0, 99]}},     # 99: never diverges
                    "objective": {"metric": "val_clean_acc", "stat": "mean", "mode": "max"},
                    "search": {"sampler": "grid"}}
    path = tmp_path / "swdiv.yaml"
    path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = cli.main(["sweep", str(path), "--experiment", "swdiv", "--tracking-uri", uri,
                     "--storage-path", str(tmp_path / "storage"), "--json"])
    out = capfd.readouterr()        # --json: the JSON object on fd 1, the rest on fd 2
    assert code == 1, out.err[-3000:]                           # a configuration failed
    report = json.loads(out.out.strip().splitlines()[-1])
    assert "failed: seed 0: loss is nan at epoch 1, batch 2" in out.err, out.err[-3000:]   # the searcher's FAIL

    by_value = {t["params"]["defense.nan_seed"]: t for t in report["trials"]}
    assert by_value[0]["status"] == "FAILED" and by_value[0]["failure"] == "seed 0: loss is nan at epoch 1, batch 2"
    assert by_value[99]["status"] == "FINISHED" and by_value[99]["failure"] == ""
    assert report["best"]["params"] == {"defense.nan_seed": 99}   # the failed one is never chosen

    client, runs = _runs(uri, "swdiv")
    (sweep,) = runs["sweep"]
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["n_failed"] == 1
    with open(client.download_artifacts(sweep.info.run_id, "trials.csv", str(tmp_path))) as f:
        rows = {r["defense.nan_seed"]: r for r in csv.DictReader(f)}
    assert (rows["0"]["status"], rows["0"]["failure"]) == ("FAILED", "seed 0: loss is nan at epoch 1, batch 2")
    assert (rows["99"]["status"], rows["99"]["failure"]) == ("FINISHED", "")
    assert not [r for rs in runs.values() for r in rs if r.info.status in ("RUNNING", "SCHEDULED")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_step_loop_never_synchronises_with_the_gpu():
    """CUDA's sync debug mode turns every host synchronisation into an error: none in the
    steps (default train step, totals, divergence check), only the one read at the end."""
    model, batches = _tiny_problem()
    device = torch.device("cuda")
    model = model.to(device)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    defense = _Counted(num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    totals = StepTotals(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches:
            totals.add(defense.train_step(model, b, optimizer))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(totals.finish(epoch=0)) == {"loss", "clean_ce", "odd"}
