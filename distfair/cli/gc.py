"""``distfair gc``: remove Ray Train's slot folders and cached checkpoints of runs that are
finished and recorded (``distfair.experiment.storage_gc`` decides; this module parses, prints
and maps errors to exit codes)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distfair.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE

DESCRIPTION = """\
Free the storage path (--storage-path of run and sweep) of what finished runs no longer need:

- Ray Train's slot folders (distfair-slots-*), once the command that used them ended (it marks
  them when it closes them) and the run of every checkpoint in them is FINISHED in MLflow with
  its checkpoint/last.pt logged;
- cached checkpoints (<storage>/init_from/<run id>/, <storage>/teacher/<run id>/, ...) of runs
  FINISHED with their checkpoint logged, when no command is known to be using the storage.

Never removed: anything of a RUNNING, failed, killed or unknown run, unlogged/ (results waiting
for `distfair relog`), logs/, Ray Tune's sweep folders (--resume needs them), anything else.
Symbolic links are never followed.
"""

EPILOG = """\
examples:
  distfair gc /mnt/distfair/runs --tracking-uri https://mlflow.internal --dry-run
  distfair gc ./distfair_runs

exit codes: 0 done (or nothing to remove), 1 the tracking server did not answer or a folder could
not be removed, 2 the storage path is not a folder.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    gc = sub.add_parser("gc", help="remove Ray Train folders and cached checkpoints of finished, recorded runs",
                        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gc.add_argument("storage", metavar="STORAGE", help="the storage path the runs used (--storage-path)")
    gc.add_argument("--tracking-uri", metavar="URI",
                    help="MLflow tracking URI the runs were recorded in (default: $MLFLOW_TRACKING_URI or "
                         "sqlite:///mlflow.db)")
    gc.add_argument("--dry-run", action="store_true", help="show what would be removed and its size; remove nothing")
    gc.add_argument("--assume-ended-after", type=float, metavar="HOURS",
                    help="take a slot folder without the end marker (its command was killed, or predates the "
                         "marker) as ended when none of its files changed for HOURS")
    gc.set_defaults(handler=cmd_gc)
    return gc


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"          # pragma: no cover


def cmd_gc(args: argparse.Namespace) -> int:
    from distfair import tracking
    from distfair.experiment import storage_gc

    storage = Path(args.storage)
    if "://" in args.storage or not storage.is_dir():
        print(f"error: {args.storage}: not a folder (give the storage path as a mounted path)", file=sys.stderr)
        return EXIT_USAGE
    if args.assume_ended_after is not None and not args.assume_ended_after > 0:
        print("error: --assume-ended-after: must be a positive number of hours", file=sys.stderr)
        return EXIT_USAGE
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    after = args.assume_ended_after * 3600 if args.assume_ended_after is not None else None
    entries = storage_gc.plan(storage, uri, assume_ended_after_s=after)
    doing = "would remove" if args.dry_run else "remove"
    for entry in entries:
        what = f"{entry.name} ({entry.kind}, {human_size(entry.size)})"
        print(f"{doing if entry.remove else 'keep'}: {what}: {entry.reason}")
    chosen = [e for e in entries if e.remove]
    total = sum(e.size for e in chosen)
    if args.dry_run:
        print(f"dry run: {len(chosen)} folder(s), {human_size(total)} ({total} bytes) would be removed from {storage}; "
              f"{len(entries) - len(chosen)} kept")
        return EXIT_OK
    freed, errors = storage_gc.remove(storage, chosen)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    print(f"removed {len(chosen) - len(errors)} folder(s), {human_size(freed)} ({freed} bytes) from {storage}; "
          f"{len(entries) - len(chosen)} kept")
    return EXIT_FAILED if errors else EXIT_OK
