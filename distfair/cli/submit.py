"""``distfair submit``: send a ``distfair run`` or ``distfair sweep`` to a Ray cluster as a Ray
Job (``distfair.distributed.submit``), after checking its options and file here."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from distfair.cli.output import EXIT_OK, EXIT_USAGE, _human_output

SUBMIT_EPILOG = """\
examples:
  distfair submit run tune_spaces/quickstart.yaml --address http://HEAD:8265 --num-seeds 5 \\
      --tracking-uri https://MLFLOW_HOST --storage-path /mnt/distfair/runs
  distfair submit sweep tune_spaces/digits_syfar.yaml --address http://HEAD:8265 --num-samples 24 \\
      --tracking-uri https://MLFLOW_HOST --storage-path /mnt/distfair/runs

--address is the cluster's dashboard (port 8265; e.g. through `ray dashboard cluster/aws.yaml`). Token
auth as for `ray job submit`: the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH (the cluster's own,
e.g. ~/.distfair-cluster/distfair-aws/auth_token) or ~/.ray/auth_token.
The tracking URI and storage path are the cluster's: absolute, and shared by its nodes (or
--allow-local on a single-node cluster); the job checks the storage path's mount again on the head.

exit codes: 0 submitted (follow it with the printed commands), 2 bad arguments, configuration or
paths, or the dashboard could not be reached or refused the job (nothing was submitted).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    submit = sub.add_parser(
        "submit", help="send a run or sweep to a Ray cluster as a Ray Job, shipping this working directory",
        description="Submit `distfair run FILE ...` or `distfair sweep FILE ...` to the Ray cluster whose dashboard "
                    "is --address (Ray's JobSubmissionClient). The working directory (--working-dir, default: here) "
                    "is shipped in the job's runtime environment without .venv, mlruns, mlflow.db, distfair_runs "
                    "and .gitignore'd files; the job's driver runs on the head and joins with --address auto. "
                    "Every option after FILE is the run's or sweep's own (see distfair run --help) and is checked "
                    "here first.",
        epilog=SUBMIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("command", choices=("run", "sweep"), help="what the job runs")
    submit.add_argument("config", metavar="FILE", help="configuration YAML inside the working directory")
    submit.add_argument("options", nargs=argparse.REMAINDER, metavar="OPTIONS",
                        help="--address http://HEAD:8265 (required), --working-dir DIR, and the options of "
                             "distfair run/sweep")
    submit.set_defaults(handler=cmd_submit)
    return submit


def cmd_submit(args: argparse.Namespace) -> int:
    # Before Ray is imported: Ray 2.60 `ray start` clusters use token auth (see main)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from distfair.config import ConfigError, load_configurations
    from distfair.distributed.submit import follow_commands, job_entrypoint, submit_job, submit_problems
    from distfair.cli.main import build_parser
    from distfair.experiment.sweep import load_sweep

    own = argparse.ArgumentParser(prog="distfair submit", add_help=False, allow_abbrev=False)
    own.add_argument("--working-dir", metavar="DIR", default=".")
    try:
        known, options = own.parse_known_args(args.options)
        # the run's or sweep's own options, checked by its own parser before anything is sent
        inner = build_parser().parse_args([args.command, args.config, *options])
    except SystemExit as exc:                 # argparse has printed why (or the help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not (inner.address or "").startswith(("http://", "https://")):
        print(f"error: --address: {'missing' if not inner.address else repr(inner.address) + ' is not a URL'}; give "
              "the cluster's Ray dashboard, e.g. --address http://HEAD:8265", file=sys.stderr)
        return EXIT_USAGE
    working_dir = Path(known.working_dir).resolve()
    if not working_dir.is_dir():
        print(f"error: --working-dir: {known.working_dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = Path(args.config).resolve().relative_to(working_dir).as_posix()
    except ValueError:
        print(f"error: {args.config}: not inside the working directory {working_dir}, the folder shipped to the "
              "cluster; pass --working-dir", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            load_configurations(args.config, inner.overrides)
        else:
            load_sweep(args.config, num_samples=inner.num_samples, num_seeds=inner.num_seeds,
                       max_concurrent=inner.max_concurrent, overrides=inner.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    tracking_uri = inner.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    problems = submit_problems(tracking_uri, inner.storage_path, allow_local=inner.allow_local)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    entrypoint = job_entrypoint(args.command, config, options, tracking_uri)
    try:
        job_id = submit_job(inner.address, entrypoint, working_dir,
                            metadata={"distfair_command": args.command, "distfair_config": config})
    except Exception as err:                  # noqa: BLE001 - Ray's client: ConnectionError, RuntimeError, ...
        print(f"error: --address {inner.address}: the job was not submitted: {type(err).__name__}: {err}",
              file=sys.stderr)
        return EXIT_USAGE
    commands = follow_commands(job_id, inner.address)
    human, _ = _human_output(inner.json)
    print(f"Submitted Ray job {job_id} to {inner.address}\n  entrypoint: {entrypoint}\n  working dir: {working_dir}\n"
          f"Follow it:\n  {commands['logs']}\nStatus, stop:\n  {commands['status']}\n  {commands['stop']}",
          file=human, flush=True)
    if inner.json:
        print(json.dumps({"job_id": job_id, "address": inner.address, "entrypoint": entrypoint,
                          "working_dir": str(working_dir), "commands": commands}), flush=True)
    return EXIT_OK
