"""``distfair gc``: what of a storage path can be removed, and removing it.

Nothing in the storage is pruned by the commands themselves, so a long series of sweeps fills
the disk. Two kinds of folder are candidates; everything else (``unlogged/``, the parked results
waiting for ``distfair relog``; ``logs/``; Ray Tune's sweep folders, which ``--resume`` needs;
anything unknown) is never touched.

- **Slot folders**, Ray Train's run folders of the worker groups
  (:mod:`distfair.distributed.slots`): ``distfair-slots-<hex>-<i>`` (a command's pool) or
  ``distfair-<parent>-<attempt>-slots-<i>`` (one configuration's own), ``-r<n>`` for a restarted
  ``fit()``. One holds the last epoch checkpoint of whichever item its slot ran last
  (``checkpoint_*/progress.json`` names the item ``distfair-<parent run id prefix>-<attempt>/seed<n>``);
  a slot runs items of many runs over a command's life, and the folder is written only while
  that command is alive. Removable when **both**: the command has ended (the slot wrote
  :data:`END_MARKER` when the command closed it; a folder without it, from a command killed
  hard or older than the marker, counts as ended only with ``--assume-ended-after HOURS`` and no
  file changed for that long), and the run of every checkpoint in it is FINISHED and recorded
  (its configuration run FINISHED, its seed run FINISHED with ``checkpoint/last.pt`` logged and
  nothing of it parked under ``unlogged/``). A folder with no checkpoint holds no run's data.
- **Cached checkpoints**, ``<storage>/<key>/<run id>/checkpoint/last.pt``: copies of a run's
  checkpoint downloaded for ``train.init_from`` or a defense's reference (``teacher``).
  Removable when the run is FINISHED with the artifact logged (the next command downloads it
  again), no command is known to be alive (every slot folder of the storage is removable
  as above) and nothing in it changed for :data:`CACHE_MIN_AGE_S` (a command that has
  downloaded it may not have started its workers yet).

A symbolic link is never followed: a link where a candidate would be is kept and reported, and
a folder is removed only when its real path is inside the storage's, with ``shutil.rmtree``
(which unlinks links inside, never their targets). Sizes count the folder's own files (lstat).
MLflow is read through :mod:`distfair.tracking` only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from distfair import tracking

#: the marker a slot writes into its folders when its command closes it (repeated from
#: ``distfair.distributed.slots.END_MARKER``: importing that package imports torch; a test keeps them equal)
END_MARKER = "distfair-ended.json"
SLOT_FOLDER = re.compile(r"^distfair-(?:slots-[0-9a-f]{8}|[0-9a-f]{12}-[0-9a-f]{8}-slots)-\d+(?:-r\d+)?$")
ITEM = re.compile(r"^distfair-([0-9a-f]{12})-[0-9a-f]{8}/seed(-?\d+)$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
NEVER = {"unlogged", "logs"}
CACHE_MIN_AGE_S = 3600.0
PROGRESS = "progress.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"      # Ray Train's, beside the checkpoint folders


@dataclass
class Entry:
    """One candidate: its path relative to the storage, kind, size, verdict and why."""
    name: str
    kind: str
    size: int
    remove: bool
    reason: str


def _tree_size_and_mtime(path: Path) -> tuple[int, float]:
    """Bytes of the regular files under ``path`` and the newest change, links not followed."""
    size, newest = 0, os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            newest = max(newest, st.st_mtime)
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return size, newest


def _slot_items(folder: Path) -> tuple[set[tuple[str, int]], str | None]:
    """The items whose checkpoints ``folder`` holds, or why they cannot be told."""
    items = set()
    for ckpt in sorted(p for p in folder.iterdir() if p.name.startswith("checkpoint_") and p.name != SNAPSHOT):
        if ckpt.is_symlink() or not ckpt.is_dir():
            return set(), f"{ckpt.name} is not a folder of Ray Train's"
        progress = ckpt / PROGRESS
        try:
            if progress.is_symlink():
                raise OSError("a symbolic link")
            item = json.loads(progress.read_text()).get("item", "")
        except (OSError, ValueError, AttributeError) as err:
            return set(), f"{ckpt.name}/{PROGRESS} cannot be read ({err}): the run is unknown"
        match = ITEM.match(str(item))
        if not match:
            return set(), f"{ckpt.name} holds an item distfair does not know ({str(item)[:80]!r})"
        items.add((match.group(1), int(match.group(2))))
    return items, None


def plan(storage: str | Path, uri: str, *, assume_ended_after_s: float | None = None,
         now: float | None = None) -> list[Entry]:
    """Every candidate under ``storage`` with its verdict (nothing is removed here)."""
    root = Path(storage)
    now = time.time() if now is None else now
    slots: list[tuple[Path, set, str | None, int]] = []
    caches: list[tuple[Path, str, int, float]] = []
    entries: list[Entry] = []
    for child in sorted(root.iterdir()):
        if child.name in NEVER:
            continue
        if SLOT_FOLDER.match(child.name):
            if child.is_symlink() or not child.is_dir():
                entries.append(Entry(child.name, "slot folder", 0, False,
                                     "a symbolic link or not a folder: never followed"))
                continue
            size, newest = _tree_size_and_mtime(child)
            items, problem = _slot_items(child)
            if problem is None and not (child / END_MARKER).is_file():
                if assume_ended_after_s is None or now - newest < assume_ended_after_s:
                    problem = ("no end marker: the command that used it may still be running "
                               + ("(--assume-ended-after takes a quiet one as ended)" if assume_ended_after_s is None
                                  else f"(changed {(now - newest) / 3600:.1f} h ago)"))
            slots.append((child, items, problem, size))
        elif child.is_dir() and not child.is_symlink():
            for run_dir in sorted(child.iterdir()):
                if (RUN_ID.match(run_dir.name) and not run_dir.is_symlink() and run_dir.is_dir()
                        and _entries(run_dir) == {"checkpoint", tracking.CHECKPOINT_ARTIFACT}):
                        size, newest = _tree_size_and_mtime(run_dir)
                        caches.append((run_dir, run_dir.name, size, newest))
    parked = root / "unlogged"
    parked_ids = {p.name for p in parked.iterdir()} if parked.is_dir() and not parked.is_symlink() else set()
    wanted = {i for _, items, p, _ in slots if p is None for i in items}
    item_reasons = tracking.seed_items_recorded(uri, wanted, parked=parked_ids) if wanted else {}
    for folder, items, problem, size in slots:
        if problem is None:
            problem = next((f"run {prefix}... seed {seed}: {item_reasons[(prefix, seed)]}" for prefix, seed in
                            sorted(items) if item_reasons.get((prefix, seed))), None)
        verdict = "its command ended; " + (", ".join(f"run {p}... seed {s}" for p, s in sorted(items))
                                          + " finished and recorded" if items else "no checkpoint in it")
        entries.append(Entry(folder.name, "slot folder", size, problem is None, problem or verdict))
    alive = any(not e.remove for e in entries if e.kind == "slot folder")
    run_reasons = tracking.runs_recorded(uri, {run_id for _, run_id, _, _ in caches}, parked=parked_ids) \
        if caches else {}
    for run_dir, run_id, size, newest in caches:
        name = str(run_dir.relative_to(root))
        reason = run_reasons.get(run_id)
        if reason is None and alive:
            reason = "a slot folder is kept, so a command may still be using this copy"
        if reason is None and now - newest < CACHE_MIN_AGE_S:
            reason = f"downloaded {int(now - newest)} s ago: a command may be about to use it"
        entries.append(Entry(name, "cached checkpoint", size, reason is None,
                             reason or f"run {run_id} finished with its checkpoint logged "
                                       f"(downloaded again when needed)"))
    return sorted(entries, key=lambda e: e.name)


def _entries(path: Path) -> set[str]:
    """Every folder and file under ``path``, relative, links not followed (a link counts as a file)."""
    out = set()
    for root, dirs, files in os.walk(path, followlinks=False):
        out |= {os.path.relpath(os.path.join(root, n), path) for n in dirs + files}
    return out


def remove(storage: str | Path, entries: list[Entry]) -> tuple[int, list[str]]:
    """Remove the entries marked for removal: bytes freed and the errors (one line each).
    Each path is checked again: a real folder, not a link, inside the storage's real path."""
    root = Path(storage).resolve()
    freed, errors = 0, []
    for entry in entries:
        if not entry.remove:
            continue
        path = Path(storage) / entry.name
        try:
            if path.is_symlink() or not path.is_dir() or root not in path.resolve().parents:
                errors.append(f"{entry.name}: no longer a folder inside {storage}; left alone")
                continue
            shutil.rmtree(path)
            freed += entry.size
        except OSError as err:
            errors.append(f"{entry.name}: {err}")
    return freed, errors
