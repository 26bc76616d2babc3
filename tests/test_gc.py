"""`distfair gc`: only Ray Train slot folders and cached checkpoints of runs that are FINISHED and
recorded (checkpoint logged) are removed, only once their command ended; never unlogged/, logs/,
Tune's folders, anything of a running, killed or unknown run, nor what a symbolic link points to.
A real SQLite MLflow store holds the runs; the storage tree is built by hand as Ray Train and
distfair lay it out. No Ray."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from distfair.cli import main
from distfair.cli.gc import human_size
from distfair.experiment import storage_gc

OLD = time.time() - 3 * 86400


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store with configuration runs in several states, each with a seed run."""
    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("gc", artifact_location=(base / "artifacts").as_uri())
    ckpt = base / "last.pt"
    ckpt.write_bytes(b"weights")
    runs = {}
    for name, parent_status, seed_status, logged in [
            ("done", "FINISHED", "FINISHED", True), ("running", "RUNNING", "FINISHED", True),
            ("killed", "KILLED", "KILLED", False), ("no_checkpoint", "FINISHED", "FINISHED", False),
            ("parked", "FINISHED", "FINISHED", True)]:
        parent = client.create_run(exp, run_name=name, tags={"distfair.role": "configuration"}).info.run_id
        child = client.create_run(exp, run_name="seed=0", tags={"mlflow.parentRunId": parent, "distfair.seed": "0",
                                                                "distfair.role": "seed"}).info.run_id
        if logged:
            client.log_artifact(child, str(ckpt), "checkpoint")
        client.set_terminated(child, seed_status)
        if parent_status != "RUNNING":
            client.set_terminated(parent, parent_status)
        runs[name] = (parent, child)
    return uri, runs


def _slot(storage: Path, name: str, parent: str | None, *, ended: bool = True, seed: int = 0) -> Path:
    """A slot's Ray Train folder as Ray Train and distfair leave it."""
    folder = storage / name
    folder.mkdir()
    (folder / ".validate_storage_marker").write_text("")
    (folder / "checkpoint_manager_snapshot.json").write_text("{}")
    if parent is not None:
        ckpt = folder / "checkpoint_2026-12-07_18-11-37.081433"
        ckpt.mkdir()
        (ckpt / "last.pt").write_bytes(b"x" * 1000)
        (ckpt / "progress.json").write_text(json.dumps({"item": f"distfair-{parent[:12]}-1cbc2b8c/seed{seed}",
                                                        "epoch": 1}))
    if ended:
        (folder / storage_gc.END_MARKER).write_text("{}")
    return folder


def _cache(storage: Path, key: str, run_id: str, *, age: float = OLD) -> Path:
    folder = storage / key / run_id
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "last.pt").write_bytes(b"y" * 500)
    for path in (folder / "checkpoint" / "last.pt", folder / "checkpoint", folder):
        os.utime(path, (age, age))
    return folder


def _bytes(root: Path, names) -> int:
    return sum(p.lstat().st_size for n in names for p in (root / n).rglob("*") if p.is_file() and not p.is_symlink())


def _gc(capsys, *args) -> tuple[int, str, str]:
    code = main(["gc", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def storage(tmp_path, store):
    """A storage path holding one folder of each kind, and a target outside it behind links."""
    uri, runs = store
    root = tmp_path / "runs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    _slot(root, "distfair-slots-0000aaaa-0", runs["done"][0])
    _slot(root, "distfair-slots-0000aaaa-0-r1", None)                      # ended, no checkpoint
    done_own = _slot(root, f"distfair-{runs['done'][0][:12]}-1cbc2b8c-slots-1", runs["done"][0])
    os.symlink(outside, done_own / "link-out")                             # removed as a link only
    _slot(root, "distfair-slots-0000bbbb-0", runs["running"][0])
    _slot(root, "distfair-slots-0000bbbb-1", runs["killed"][0])
    _slot(root, "distfair-slots-0000bbbb-2", runs["no_checkpoint"][0])
    _slot(root, "distfair-slots-0000bbbb-3", runs["done"][0], ended=False)
    _slot(root, "distfair-slots-0000bbbb-4", "f" * 32)                      # no such run
    _slot(root, "distfair-slots-0000bbbb-5", runs["parked"][0])
    os.symlink(outside, root / "distfair-slots-0000cccc-0")                 # a link where a slot would be
    (root / "unlogged" / runs["parked"][1]).mkdir(parents=True)
    (root / "unlogged" / runs["parked"][1] / "run.json").write_text("{}")
    (root / "logs").mkdir()
    (root / "logs" / "run-x.log").write_text("log")
    (root / "digits_syfar-0123abcd-1").mkdir()                             # Tune's sweep folder
    (root / "digits_syfar-0123abcd-1" / "tuner.pkl").write_bytes(b"state")
    _cache(root, "init_from", runs["done"][1])
    return uri, runs, root, outside


REMOVABLE = {"distfair-slots-0000aaaa-0", "distfair-slots-0000aaaa-0-r1"}


def test_dry_run_lists_verdicts_and_bytes_and_removes_nothing(capsys, storage):
    uri, runs, root, outside = storage
    before = sorted(str(p) for p in root.rglob("*"))
    code, out, err = _gc(capsys, root, "--tracking-uri", uri, "--dry-run")
    assert (code, err) == (0, "")
    assert sorted(str(p) for p in root.rglob("*")) == before
    lines = out.splitlines()
    verdicts = {line.split(": ")[1].split(" (")[0]: line.split(":")[0] for line in lines[:-1]}
    own = f"distfair-{runs['done'][0][:12]}-1cbc2b8c-slots-1"
    assert {n for n, v in verdicts.items() if v == "would remove"} == REMOVABLE | {own}
    assert set(verdicts) == REMOVABLE | {own, f"init_from/{runs['done'][1]}", "distfair-slots-0000cccc-0",
                                         *(f"distfair-slots-0000bbbb-{i}" for i in range(6))}
    text = "\n".join(lines)
    assert re.search(r"keep: distfair-slots-0000bbbb-0 .*configuration run \w+ is RUNNING", text)
    assert re.search(r"keep: distfair-slots-0000bbbb-1 .*configuration run \w+ is KILLED", text)
    assert re.search(r"keep: distfair-slots-0000bbbb-2 .*has no checkpoint/last.pt logged", text)
    assert re.search(r"keep: distfair-slots-0000bbbb-3 .*no end marker: the command that used it may still", text)
    assert re.search(r"keep: distfair-slots-0000bbbb-4 .*no MLflow run ffffffffffff\.\.\.", text)
    assert re.search(r"keep: distfair-slots-0000bbbb-5 .*parked in unlogged/: run distfair relog first", text)
    assert re.search(r"keep: distfair-slots-0000cccc-0 .*symbolic link or not a folder: never followed", text)
    assert re.search(r"keep: init_from/\w+ \(cached checkpoint, 500 B\): a slot folder is kept", text)
    assert re.search(rf"would remove: distfair-slots-0000aaaa-0 \(slot folder, 1.0 KiB\): its command ended; "
                     rf"run {runs['done'][0][:12]}\.\.\. seed 0 finished and recorded", text)
    assert "would remove: distfair-slots-0000aaaa-0-r1 (slot folder, 4 B): its command ended; no checkpoint" in text
    total = _bytes(root, REMOVABLE | {own})             # the link inside counts nothing of its target
    assert lines[-1] == f"dry run: 3 folder(s), {human_size(total)} ({total} bytes) would be removed from {root}; 8 kept"


def test_gc_removes_only_the_safe_folders_and_never_follows_links(capsys, storage):
    uri, runs, root, outside = storage
    own = f"distfair-{runs['done'][0][:12]}-1cbc2b8c-slots-1"
    total = _bytes(root, REMOVABLE | {own})
    code, out, err = _gc(capsys, root, "--tracking-uri", uri)
    assert (code, err) == (0, ""), err
    assert out.splitlines()[-1] == f"removed 3 folder(s), {human_size(total)} ({total} bytes) from {root}; 8 kept"
    left = {p.name for p in root.iterdir()}
    assert not left & REMOVABLE and own not in left
    assert {"unlogged", "logs", "digits_syfar-0123abcd-1", "init_from", "distfair-slots-0000cccc-0",
            *(f"distfair-slots-0000bbbb-{i}" for i in range(6))} == left
    assert (outside / "precious.txt").read_text() == "keep me"            # behind both links
    assert (root / "distfair-slots-0000cccc-0").is_symlink()
    assert (root / "unlogged" / runs["parked"][1] / "run.json").exists()
    assert (root / "digits_syfar-0123abcd-1" / "tuner.pkl").exists() and (root / "logs" / "run-x.log").exists()
    assert (root / "init_from" / runs["done"][1] / "checkpoint" / "last.pt").exists()
    # a second pass finds nothing more
    code, out, _ = _gc(capsys, root, "--tracking-uri", uri)
    assert code == 0 and out.splitlines()[-1] == f"removed 0 folder(s), 0 B (0 bytes) from {root}; 8 kept"


def test_caches_go_once_no_command_may_use_them(capsys, tmp_path, store):
    uri, runs = store
    root = tmp_path / "runs"
    root.mkdir()
    _slot(root, "distfair-slots-0000aaaa-0", runs["done"][0])
    old = _cache(root, "init_from", runs["done"][1])
    fresh = _cache(root, "teacher", runs["done"][1], age=time.time())
    unfinished = _cache(root, "teacher", runs["killed"][1])
    code, out, err = _gc(capsys, root, "--tracking-uri", uri)
    assert (code, err) == (0, "")
    assert not old.exists() and fresh.exists() and unfinished.exists()
    assert re.search(rf"keep: teacher/{runs['done'][1]} .*downloaded \d+ s ago", out)
    assert re.search(rf"keep: teacher/{runs['killed'][1]} .*is KILLED", out)
    assert out.splitlines()[-1].startswith("removed 2 folder(s), ")


def test_a_folder_without_end_marker_only_with_assume_ended_after(capsys, tmp_path, store):
    uri, runs = store
    root = tmp_path / "runs"
    root.mkdir()
    quiet = _slot(root, "distfair-slots-0000dddd-0", runs["done"][0], ended=False)
    for path in [*quiet.rglob("*"), quiet]:
        os.utime(path, (OLD, OLD))
    busy = _slot(root, "distfair-slots-0000dddd-1", runs["done"][0], ended=False)
    code, out, _ = _gc(capsys, root, "--tracking-uri", uri, "--assume-ended-after", "24")
    assert code == 0 and not quiet.exists() and busy.exists()
    assert re.search(r"keep: distfair-slots-0000dddd-1 .*no end marker.*\(changed 0\.0 h ago\)", out)


def test_a_folder_that_became_a_link_after_planning_is_left_alone(tmp_path, store):
    uri, runs = store
    root = tmp_path / "runs"
    root.mkdir()
    folder = _slot(root, "distfair-slots-0000eeee-0", runs["done"][0])
    entries = storage_gc.plan(root, uri)
    assert [e.remove for e in entries] == [True]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    os.symlink(outside, folder)
    freed, errors = storage_gc.remove(root, entries)
    assert freed == 0 and errors == [f"distfair-slots-0000eeee-0: no longer a folder inside {root}; left alone"]
    assert (outside / "precious.txt").exists()


def test_usage_errors(capsys, tmp_path):
    assert _gc(capsys, tmp_path / "missing")[0] == 2
    assert _gc(capsys, "s3://bucket/runs")[0] == 2
    code, _, err = _gc(capsys, tmp_path, "--assume-ended-after", "0")
    assert code == 2 and "--assume-ended-after" in err


def test_help_lists_gc(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"^\s+gc\s+remove Ray Train folders", capsys.readouterr().out, re.M)


def test_names_match_what_the_slots_and_runner_write():
    """The folder and item names gc reads are the ones distfair writes (read from the source:
    importing distfair.distributed imports torch)."""
    root = Path(__file__).resolve().parent.parent / "distfair"
    slots = (root / "distributed" / "slots.py").read_text()
    assert f'END_MARKER = "{storage_gc.END_MARKER}"' in slots
    assert 'f"distfair-slots-{uuid.uuid4().hex[:8]}"' in slots and 'f"{self.name}-{i}"' in slots
    assert 'f"{slot.name}-r{fit}"' in slots and 'f"{slot.name}-r{slot.fits}"' in slots
    runner = (root / "distributed" / "runner.py").read_text()
    assert '"key": f"{run_name}/seed{s}"' in runner and 'name=f"{run_name}-slots"' in runner
    assert 'return f"distfair-{parent[:12]}-{attempt}"' in (root / "experiment" / "run.py").read_text()
    assert storage_gc.SLOT_FOLDER.match("distfair-slots-d7efafd4-1")
    assert storage_gc.SLOT_FOLDER.match("distfair-ebae0f2bded2-1cbc2b8c-slots-0-r2")
    assert not storage_gc.SLOT_FOLDER.match("distfair-slots-d7efafd4")
    assert storage_gc.ITEM.match("distfair-ebae0f2bded2-1cbc2b8c/seed1").groups() == ("ebae0f2bded2", "1")


def test_a_closed_pool_marks_each_of_its_slot_folders_ended(tmp_path):
    """SlotPool._mark_ended (called at the end of close()): every fit()'s folder of a slot whose
    thread ended gets the marker; a slot still running, a missing folder or a link gets none."""
    import threading

    from distfair.distributed.slots import END_MARKER, SlotPool, _Slot

    assert END_MARKER == storage_gc.END_MARKER
    pool = object.__new__(SlotPool)
    pool.storage_path = f"file://{tmp_path}"
    running = threading.Event()
    alive = threading.Thread(target=running.wait, daemon=True)
    alive.start()
    pool.slots = [_Slot(0, "distfair-slots-0000ffff-0", fits=2), _Slot(1, "distfair-slots-0000ffff-1", thread=alive, fits=1),
                  _Slot(2, "distfair-slots-0000ffff-2", fits=1), _Slot(3, "distfair-slots-0000ffff-3", fits=1)]
    for name in ("distfair-slots-0000ffff-0", "distfair-slots-0000ffff-0-r1", "distfair-slots-0000ffff-1"):
        (tmp_path / name).mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "distfair-slots-0000ffff-3")
    try:
        pool._mark_ended()
    finally:
        running.set()
    assert (tmp_path / "distfair-slots-0000ffff-0" / END_MARKER).is_file()
    assert (tmp_path / "distfair-slots-0000ffff-0-r1" / END_MARKER).is_file()
    assert not (tmp_path / "distfair-slots-0000ffff-1" / END_MARKER).exists()       # still running
    assert not (tmp_path / "distfair-slots-0000ffff-2").exists()                    # Ray Train never made it
    assert list(outside.iterdir()) == []                                          # never through a link
    stamp = json.loads((tmp_path / "distfair-slots-0000ffff-0" / END_MARKER).read_text())
    assert set(stamp) == {"ended_at", "pid", "host"}
