"""``distfair run``: parse, call ``distfair.experiment.run_plan``, print each configuration's
table, map its exceptions to exit codes."""
from __future__ import annotations

import argparse
import json
import sys

from distfair.cli.args import _positive_int, _seed_list, add_cluster_args, destination
from distfair.cli.output import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, _human_output, _json_safe,
                                 fail, format_table, stdout_to_stderr)
from distfair.experiment.errors import Refused, RunAborted, RunInterrupted

RUN_EPILOG = """\
examples:
  distfair run tune_spaces/quickstart.yaml
  distfair run tune_spaces/quickstart.yaml --num-seeds 5 --set defense.lambda_sym=2.0
  distfair run cfg.yaml --address auto --tracking-uri https://mlflow.example.org --storage-path /mnt/distfair/runs
  distfair run cfg.yaml --json | jq .metrics.worst_class_acc
  distfair run tune_spaces/speech_rejection.yaml      # its `configurations:` one after another
  distfair run tune_spaces/quickstart.yaml --resume   # after a crash, Ctrl-C or a killed driver

--resume continues the newest attempt of this configuration in the experiment (same file, same
--set values and seeds: another --set is another configuration): its FINISHED seed runs are kept,
the others are redone in new seed runs (the unfinished ones are marked KILLED and deleted) and the
parent's statistics are recomputed over all seeds. A configuration that already finished every
seed is reported without training; of a `configurations:` file, one not started yet starts now.

exit codes: 0 all seeds finished, 1 a seed failed (the others are still recorded),
2 bad arguments or configuration, or --resume with no earlier run (nothing was started),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM: `ray job stop`, an eviction); resume with --resume.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run", help="train one configuration over several seeds and record it in MLflow",
        description="Train ONE configuration over several seeds (concurrently when the cluster has room), "
                    "evaluate each model clean and under the eval attacks, and record a parent MLflow run "
                    "with one child run per seed. Ends with a table of mean ± std and the 95% interval. "
                    "A file with a `configurations:` block (e.g. tune_spaces/speech_rejection.yaml) runs "
                    "each of its configurations in turn, one parent run each, over the same seeds. After a crash, "
                    "Ctrl-C or a killed driver, --resume finishes only the seeds that did not finish.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", metavar="FILE", help="configuration YAML (see tune_spaces/quickstart.yaml)")
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seed_list, metavar="0,1,2", help="the seeds to run (overrides `seeds:`)")
    seeds.add_argument("--num-seeds", type=_positive_int, metavar="N", help="run seeds 0..N-1 (overrides `seeds:`)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config value, parsed as YAML (repeatable), e.g. --set train.lr=0.01")
    run.add_argument("--resume", action="store_true",
                     help="continue the newest attempt of this configuration (same FILE, --set and seeds) in the "
                          "experiment: its finished seed runs are kept, the others redone")
    add_cluster_args(run)
    run.set_defaults(handler=cmd_run)
    return run


def cmd_run(args: argparse.Namespace) -> int:
    from distfair.experiment.run_plan import RunRequest, execute_run, plan_run

    request = RunRequest(config=args.config, overrides=args.overrides, seeds=args.seeds, num_seeds=args.num_seeds,
                         resume=args.resume, **destination(args))
    try:
        plan = plan_run(request)
    except Refused as err:
        return fail(err)
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)

        def on_report(name, cfg: dict, report, label: str, final: bool) -> None:
            _print_run_report(report, cfg, label, plan.tracking_uri, human, final=final)

        try:
            outcome = execute_run(plan, log=log, on_report=on_report)
        except (Refused, RunAborted) as err:
            return fail(err)
        except RunInterrupted as err:
            print(("terminated (SIGTERM)" if err.terminated else "interrupted") + ": the runs were marked KILLED in MLflow"
                  + (f" (configurations finished before: {', '.join(err.finished)})" if err.finished else "")
                  + f"; continue with\n  {_resume_command(args)}", file=sys.stderr)
            return EXIT_TERMINATED if err.terminated else EXIT_INTERRUPTED
        if args.json:
            out.write(json.dumps(_json_safe(outcome.to_json())) + "\n")
    return EXIT_FAILED if outcome.failed else EXIT_OK


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues this very ``distfair run``: the same FILE, --set values,
    seeds, experiment, store and cluster options (``--set`` changes the configuration's hash,
    so it must be repeated), plus --resume."""
    import shlex

    words = ["distfair", "run", args.config]
    for override in args.overrides:
        words += ["--set", override]
    if args.seeds is not None:
        words += ["--seeds", ",".join(map(str, args.seeds))]
    elif args.num_seeds is not None:
        words += ["--num-seeds", str(args.num_seeds)]
    for option in ("experiment", "tracking_uri", "address", "num_cpus", "storage_path"):
        value = getattr(args, option)
        if value is not None:
            words += [f"--{option.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    words += [flag for flag, on in (("--allow-local", args.allow_local), ("--json", args.json)) if on]
    return shlex.join(words + ["--resume"])


def _print_run_report(report, cfg: dict, label: str, uri: str, human, *, final: bool) -> None:
    """The seeds' mean ± std table of one configuration, its failures and where to look."""
    from distfair import tracking
    from distfair.experiment.summary import stopping_line
    from distfair.results.names import INTERVAL_NOTE

    attacks = [a["name"] for a in cfg["eval"]["attacks"]]
    ran = report.stopping["seeds_run"] if report.stopping is not None else len(cfg["seeds"])
    print(f"\n{label}{len(report.seeds)}/{ran} seeds finished. Mean ± std across seeds; "
          f"{INTERVAL_NOTE}:\n"
          + format_table(report.metrics, attacks[1:], attacks[0] if attacks else None), file=human)
    if report.stopping is not None:
        print(f"{label}{stopping_line(report.stopping)}", file=human)
    for seed, why in sorted(report.errors.items()):
        print(f"{label}seed {seed} FAILED: {why}", file=human)
    print(f"\n{label}MLflow: experiment {report.experiment!r}, parent run {report.parent_run_id}"
          + (f"\nLook at it: {tracking.ui_command(uri, report.experiment_id)}" if final else ""), file=human, flush=True)
