"""``distfair sweep``: parse, call ``distfair.experiment.sweep_plan``, print the sweep's
configurations (:func:`format_sweep`), map its exceptions to exit codes."""
from __future__ import annotations

import argparse
import json
import sys

from distfair.cli.args import _positive_int, add_cluster_args, destination
from distfair.cli.output import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, _fmt, _human_output,
                                 _json_safe, fail, stdout_to_stderr)
from distfair.experiment.errors import Refused, RunInterrupted

SWEEP_EPILOG = """\
examples:
  distfair sweep tune_spaces/quickstart_sweep.yaml
  distfair sweep tune_spaces/digits_syfar.yaml --num-samples 24 --num-seeds 5 --address auto \
      --tracking-uri https://mlflow.example.org --storage-path /mnt/distfair/runs
  distfair sweep tune_spaces/digits_syfar.yaml --resume             # after a crash or Ctrl-C

selection never sees the test set: objectives name validation metrics (val_worst_class_acc,
val_robust_acc, val_clean_acc, ...: the primary evaluation attack on the validation split carved
from the training data). The chosen configuration's test metrics are reported beside them.

exit codes: 0 finished, 1 a configuration failed (the others are recorded), 2 bad arguments or
configuration (nothing was started), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: `ray job stop`, an eviction); resume with --resume.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    sweep = sub.add_parser(
        "sweep", help="search a configuration's `space` with Ray Tune + Optuna, every configuration over seeds",
        description="Search the `space` block of FILE with Ray Tune + Optuna (seeded sampler). Every "
                    "configuration is trained over all its seeds (as `distfair run` does) and judged on the "
                    "distribution of its seeds (mean, std, mean - k*std, ...); multi-objective searches report "
                    "the Pareto set. MLflow: a sweep run -> a configuration run per trial -> a seed run per seed.",
        epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("config", metavar="FILE", help="configuration YAML with a `space` block "
                                                      "(see tune_spaces/quickstart_sweep.yaml)")
    sweep.add_argument("--num-samples", type=_positive_int, metavar="N",
                       help="sampled points (overrides space.search.num_samples); each runs at every grid point")
    sweep.add_argument("--num-seeds", type=_positive_int, metavar="N", help="seeds 0..N-1 per configuration")
    sweep.add_argument("--max-concurrent", type=_positive_int, metavar="N",
                       help="configurations at once (default: as many as the cluster holds with all their seeds)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a value of FILE, parsed as YAML (repeatable), e.g. --set defense.teacher=RUN_ID")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the newest attempt of this sweep after a crash or Ctrl-C: finished "
                            "configurations are kept, unfinished seed runs are redone")
    add_cluster_args(sweep)
    sweep.set_defaults(handler=cmd_sweep)
    return sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from distfair.experiment.sweep_plan import SweepRequest, execute_sweep, plan_sweep

    request = SweepRequest(config=args.config, overrides=args.overrides, num_samples=args.num_samples,
                           num_seeds=args.num_seeds, max_concurrent=args.max_concurrent, resume=args.resume,
                           **destination(args))
    try:
        plan = plan_sweep(request)
    except Refused as err:
        return fail(err)

    from distfair import tracking

    uri = plan.tracking_uri
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        try:
            report = execute_sweep(plan, log=log)
        except Refused as err:
            return fail(err)
        except RunInterrupted as err:
            print(("terminated (SIGTERM)" if err.terminated else "interrupted") + ": open runs were marked KILLED; "
                  f"continue with\n  distfair sweep {args.config} --resume"
                  + (f" --experiment {args.experiment}" if args.experiment else ""), file=sys.stderr)
            return EXIT_TERMINATED if err.terminated else EXIT_INTERRUPTED
        print("\n" + format_sweep(report), file=human)
        print(f"\nMLflow: experiment {report.experiment!r}, sweep run {report.sweep_run_id}\n"
              f"Look at it: {tracking.ui_command(uri, report.experiment_id)}", file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe(report.to_json()), default=str) + "\n")
    return EXIT_FAILED if any(t.status == "FAILED" for t in report.trials) else EXIT_OK


def format_sweep(report) -> str:
    from distfair.results.names import matching_test_metric, stat_name
    from distfair.experiment.sweep_results import objective_metrics, objective_on_test, spread_text

    names = [t.name for t in report.spec.objective]
    lines = [f"{len(report.trials)} configuration(s); objective: " + ", ".join(
        f"{t.mode} {t.name}" + (f" (k={t.k})" if "std" in t.stat and t.stat != "std" else "")
        for t in report.spec.objective)]
    # each objective metric's spread over the seeds on validation (what selection sees), then
    # its test counterpart (reported, never used to choose): mean ± std (n) and 95% t-interval
    spread = objective_metrics(report.spec.objective)
    width = max(len(m) for _, m in spread)
    for t in report.trials:
        mark = "*" if report.best and t.parent_run_id == report.best.parent_run_id else (
            "p" if t in report.pareto else " ")
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        values = " ".join(f"{n}={_fmt(v)}" for n, v in zip(names, t.objective))
        lines.append(f" {mark} {t.trial_id:<12} {t.status:<8} {params} | {values}")
        lines += [f"     {family:<10} {metric:<{width}}  {spread_text(t, family, metric)}" for family, metric in spread]
    if report.best:
        lines.append(f"best (*): {report.best.params}" + (f"; Pareto set (p and *): {len(report.pareto)}"
                                                         if len(names) > 1 else ""))
        lines.append("  chosen on the validation split; its test-set numbers (reported, never used to choose):")
        for target, value in zip(report.spec.objective, report.best.objective):
            test_name = matching_test_metric(target.metric)
            lines.append(f"    validation {target.name}={_fmt(value)}   test {stat_name(test_name, target.stat)}="
                         f"{_fmt(objective_on_test(target, report.best))}")
    return "\n".join(lines)
