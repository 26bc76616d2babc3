"""Storage that cannot be written, storage that fills up mid-run, and a data root that
disappears mid-run: a clear error naming the path, and no MLflow run left RUNNING.

The faults are real. We run as root, so permission bits block nothing: "not writable" is a
storage path under a regular file (ENOTDIR, no privileges needed) and a read-only tmpfs
(EROFS); "full" is a tiny tmpfs filled to the last byte (ENOSPC). The tmpfs cases need
``mount`` (CAP_SYS_ADMIN) and are skipped, saying so, where it is not permitted.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from distfair import cli, tracking
from distfair.config import validate
from distfair.engine import run_seed

from conftest import TINY, stop_process_group  # tests/ is on sys.path under pytest (no __init__.py)
from fake_faces import make_fake_faces


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its file system says it is full."""
    for i in range(1000):
        try:
            with open(folder / f"filler{i}", "wb") as handle:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
        except OSError:
            pass
        if os.statvfs(folder).f_bavail == 0:
            return


@contextlib.contextmanager
def _tmpfs(where: Path, *options: str):
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused_before_start(tmp_path, capsys, storage: Path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = _write(tmp_path, TINY)
    assert cli.main(["run", str(path), "--tracking-uri", uri, "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: storage path {storage}: cannot write there (") and len(err.splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() or MlflowClient(uri).get_experiment_by_name("cfg") is None
    return err


def test_a_storage_path_under_a_regular_file_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    assert "Not a directory" in _refused_before_start(tmp_path, capsys, tmp_path / "afile" / "runs")


def test_a_read_only_storage_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _tmpfs(tmp_path / "ro", "ro") as mount:
        assert "Read-only file system" in _refused_before_start(tmp_path, capsys, mount / "runs")


def test_a_full_storage_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _tmpfs(tmp_path / "full") as mount:
        (mount / "runs").mkdir()
        _fill(mount)
        assert "No space left on device" in _refused_before_start(tmp_path, capsys, mount / "runs")


@pytest.mark.ray
def test_storage_that_fills_up_mid_run_fails_the_run_naming_the_path(tmp_path):
    """The real command: once a seed has reported an epoch, the storage's tmpfs is filled.
    Ray Train's next checkpoint upload (and the command's log file) hit ENOSPC: the command
    says so, exits 1, and leaves every MLflow run FAILED, none RUNNING."""
    data = {**TINY, "train": {**TINY["train"], "epochs": 300}, "seeds": [0]}      # long enough to be filled
    path = _write(tmp_path, data)
    db = tmp_path / "mlflow.db"
    tracking.prepare_experiment(f"sqlite:///{db}", "full")   # the store exists before two processes open it
    with _tmpfs(tmp_path / "mnt", "size=8m") as mount:
        storage = mount / "runs"
        proc = subprocess.Popen([sys.executable, "-m", "distfair.cli", "run", str(path), "--experiment", "full",
                                 "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(storage),
                                 "--num-cpus", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        seen, first_epoch = [], threading.Event()

        def read(stream):
            for line in stream:
                seen.append(line)
                if "seed 0: epoch 1/" in line:
                    first_epoch.set()

        readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
        for reader in readers:
            reader.start()
        try:
            assert first_epoch.wait(300), "".join(seen)[-3000:]
            while proc.poll() is None:               # keep it full: Ray frees old checkpoints as it goes
                _fill(mount)
                first_epoch.wait(0.2)
            for reader in readers:
                reader.join(30)
        finally:
            stop_process_group(proc)
        text = "".join(seen)
        assert proc.returncode == 1, text[-3000:]
        # which write meets the full disk first decides the message: the command's own log file
        # (then "storage path <path>: No space left on device ...") or the seed's checkpoint upload
        # (then "seed 0 FAILED: ... No space left on device")
        assert f"storage path {storage}: No space left on device" in text or (
            "seed 0 FAILED" in text and "No space left on device" in text), text[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_id, r.info.status) for r in runs]


def test_a_face_root_that_disappears_mid_run_fails_naming_the_image(tmp_path):
    """Face images are read lazily, batch by batch (``FaceImages``): a root renamed after the
    first epoch fails the next epoch's first read with an error naming the missing file. The
    seed's error then marks its run FAILED like any failing seed (test_ray_run)."""
    root = make_fake_faces(tmp_path / "faces", per_identity=10, size=8)
    cfg = validate({**TINY, "dataset": {"name": "faces", "root": str(root), "image_size": 8, "metadata": None},
                    "seeds": [0]}, "faces.yaml")

    def vanish(epoch, row, checkpoint):
        if epoch == 0:
            root.rename(tmp_path / "moved")

    with pytest.raises(OSError, match=rf"cannot read face image '{root}/\w+/\d+\.png'.*No such file"):
        run_seed(cfg, 0, workdir=tmp_path / "seed", on_epoch=vanish)


def test_the_storage_probe_leaves_no_trace(tmp_path):
    """A command refused after the probe (its init_from, say) must leave no folder behind; a
    folder that was there stays."""
    from distfair.experiment.run import storage_problem

    assert storage_problem(tmp_path / "a" / "b" / "runs") is None
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    assert storage_problem(tmp_path / "kept") is None
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
