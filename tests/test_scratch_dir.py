"""A worker's scratch folder for a seed's epoch checkpoint (``distfair.distributed.worker.
scratch_dir``, issue 28 §8): new, private and unguessable on every call, inside a folder of this
user's alone; a folder someone else could have made or redirected is never used, and nothing
outside the user's own folder is ever deleted. No Ray: the function is plain file system work."""
from __future__ import annotations

import inspect
import os
import stat

from distfair.distributed import worker
from distfair.distributed.worker import scratch_dir


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_each_call_makes_a_new_private_folder_in_the_users_own(tmp_path):
    a = scratch_dir("sweep-1/cfg 3", 0, 7, tmp=tmp_path)
    b = scratch_dir("sweep-1/cfg 3", 0, 7, tmp=tmp_path)
    c = scratch_dir("sweep-1/cfg 3", 1, 7, tmp=tmp_path)
    own = tmp_path / f"distfair-{os.geteuid()}"
    assert a.parent == c.parent == own and a != c
    assert not a.exists() and b.is_dir()       # the second attempt of the same seed replaced the first's
    assert _mode(own) == 0o700 and _mode(b) == 0o700 and _mode(c) == 0o700
    assert b.name.startswith("sweep-1_cfg_3-rank0-seed7-") and len(b.name) > len("sweep-1_cfg_3-rank0-seed7-") + 5


def test_stale_folders_of_other_seeds_and_runs_are_kept(tmp_path):
    other_seed = scratch_dir("run", 0, 1, tmp=tmp_path)
    other_rank = scratch_dir("run", 10, 1, tmp=tmp_path)
    other_run = scratch_dir("run2", 0, 1, tmp=tmp_path)
    scratch_dir("run", 0, 11, tmp=tmp_path)
    scratch_dir("run", 1, 1, tmp=tmp_path)
    assert other_seed.is_dir() and other_rank.is_dir() and other_run.is_dir()


def test_the_old_predictable_path_planted_in_advance_is_neither_used_nor_deleted(tmp_path):
    planted = tmp_path / "distfair" / "run" / "rank0" / "seed_0"
    planted.mkdir(parents=True)
    (planted / "last.pt").write_text("planted")
    got = scratch_dir("run", 0, 0, tmp=tmp_path)
    assert not str(got).startswith(str(tmp_path / "distfair") + os.sep)
    assert (planted / "last.pt").read_text() == "planted"


def test_a_symlink_in_place_of_the_users_folder_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "run-rank0-seed0-keep").mkdir()        # would match the stale-folder cleanup if followed
    (tmp_path / f"distfair-{os.geteuid()}").symlink_to(victim)
    got = scratch_dir("run", 0, 0, tmp=tmp_path)
    assert got.parent == tmp_path and _mode(got) == 0o700
    assert (victim / "run-rank0-seed0-keep").is_dir() and [p.name for p in victim.iterdir()] == ["run-rank0-seed0-keep"]


def test_a_users_folder_open_to_others_or_owned_by_someone_else_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / f"distfair-{os.geteuid()}"
    shared.mkdir()
    shared.chmod(0o777)                               # as another user could have made it for us
    (shared / "run-rank0-seed0-theirs").mkdir()
    got = scratch_dir("run", 0, 0, tmp=tmp_path)
    assert got.parent == tmp_path and (shared / "run-rank0-seed0-theirs").is_dir()
    # a folder of the right name owned by another user (this process plays a different uid)
    monkeypatch.setattr(worker.os, "geteuid", lambda: os.getuid() + 1)
    theirs = tmp_path / f"distfair-{os.getuid() + 1}"
    theirs.mkdir(mode=0o700)
    got = scratch_dir("run", 0, 0, tmp=tmp_path)
    assert got.parent == tmp_path and list(theirs.iterdir()) == []


def test_the_worker_takes_its_seed_folder_from_scratch_dir():
    source = inspect.getsource(worker._run_item)
    assert "scratch_dir(" in source and "gettempdir" not in source
