"""The ``distfair`` parser (one subcommand per module of ``distfair.cli``; ``cluster``'s from
``distfair.deploy``) and :func:`main`, which maps what escapes a command to an exit code."""
from __future__ import annotations

import argparse
import os
import sys

from distfair.cli import analyze, gc, race_replay, relog, report, run, submit, sweep
from distfair.cli.output import EXIT_FAILED, EXIT_USAGE
from distfair.tracking.buffer import TrackingUnavailable   # no MLflow: the package loads it on first use

DESCRIPTION = """\
distfair: fairness-aware adversarial robustness, repeated over seeds.

Each defense is trained by Ray Train (DDP across workers and nodes), once per seed,
evaluated clean and under attack, and recorded in MLflow: a parent run per configuration
with mean/std/min/max across seeds, and a child run per seed with curves, metrics,
confusion matrices, plots and the final checkpoint.

Without --address a local Ray instance is started; without --tracking-uri (or
MLFLOW_TRACKING_URI) results go to sqlite:///mlflow.db in the working directory.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distfair", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run.add_parser(sub)
    sweep.add_parser(sub)
    analyze.add_parser(sub)
    report.add_parser(sub)
    race_replay.add_parser(sub)
    submit.add_parser(sub)

    from distfair.deploy import add_subparser as add_cluster_parser

    add_cluster_parser(sub)

    relog.add_parser(sub)
    gc.add_parser(sub)
    return parser


def _credentials_in_tracking_uri(args: argparse.Namespace) -> str | None:
    """Why the command's tracking URI is refused before anything starts (a user or password in
    it), or None."""
    from distfair.tracking.uris import uri_credentials_problem

    given = getattr(args, "tracking_uri", None)
    if given:
        return uri_credentials_problem(given, "--tracking-uri")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return uri_credentials_problem(env, "MLFLOW_TRACKING_URI") if env else None


def _version() -> str:
    from distfair import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "address", None):
        # Before anything imports Ray: a driver joining a `ray start` cluster must use the
        # token auth mode that Ray 2.60 clusters have by default (docs/ray-notes.md).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    problem = _credentials_in_tracking_uri(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except TrackingUnavailable as err:       # any command whose tracking server stayed away
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
