"""``distfair relog``: log into MLflow what a run kept on disk while the tracking server was
unreachable (``distfair.tracking``)."""
from __future__ import annotations

import argparse
import sys

from distfair.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _HumanLog


def add_parser(sub) -> argparse.ArgumentParser:
    relog = sub.add_parser(
        "relog", help="log the results kept on disk while the tracking server was unreachable",
        description="Log into MLflow what `distfair run` kept on disk because the tracking server did not answer "
                    "(the command its error message printed): every metric, tag, artifact and final status, in "
                    "their order. DIR: <storage>/unlogged, or one run's folder in it; each folder is deleted once "
                    "logged, and an interrupted relog resumes where it stopped.")
    relog.add_argument("folder", metavar="DIR", help="<storage>/unlogged or one run's folder in it")
    relog.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    relog.set_defaults(handler=cmd_relog)
    return relog


def cmd_relog(args: argparse.Namespace) -> int:
    from distfair import tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    log = _HumanLog(sys.stdout)
    tracking.set_outage_log(log)
    try:
        run_ids = tracking.relog(args.folder, uri, log)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except tracking.TrackingUnavailable as err:
        print(f"error: {err}; nothing is lost, run the same command again later", file=sys.stderr)
        return EXIT_FAILED
    log(f"{len(run_ids)} run(s) logged into {uri}")
    return EXIT_OK
