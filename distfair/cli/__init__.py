"""The ``distfair`` command line."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
distfair: fairness-aware adversarial robustness, repeated over seeds.

Each defense is trained by Ray Train (DDP across workers and nodes), once per seed,
evaluated clean and under attack, and recorded in MLflow: a parent run per configuration
with mean/std/min/max across seeds, and a child run per seed with curves, metrics,
confusion matrices, plots and the final checkpoint.

Without --address a local Ray instance is started; without --tracking-uri (or
MLFLOW_TRACKING_URI) results go to sqlite:///mlflow.db in the working directory.
"""

RUN_EPILOG = """\
examples:
  distfair run tune_spaces/quickstart.yaml
  distfair run tune_spaces/quickstart.yaml --num-seeds 5 --set defense.lambda_sym=2.0
  distfair run cfg.yaml --address auto --tracking-uri http://mlflow:5000 --storage-path /mnt/distfair/runs
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
130 interrupted (resume with --resume).
"""


SWEEP_EPILOG = """\
examples:
  distfair sweep tune_spaces/quickstart_sweep.yaml
  distfair sweep tune_spaces/digits_syfar.yaml --num-samples 24 --num-seeds 5 --address auto \
      --tracking-uri http://mlflow:5000 --storage-path /mnt/distfair/runs
  distfair sweep tune_spaces/digits_syfar.yaml --resume             # after a crash or Ctrl-C

selection never sees the test set: objectives name validation metrics (val_worst_class_acc,
val_robust_acc, val_clean_acc, ...: the primary evaluation attack on the validation split carved
from the training data). The chosen configuration's test metrics are reported beside them.

exit codes: 0 finished, 1 a configuration failed (the others are recorded), 2 bad arguments or
configuration (nothing was started), 130 interrupted (resume with --resume).
"""


ANALYZE_EPILOG = """\
examples:
  distfair analyze --experiment speech_interventions
  distfair analyze --experiment speech_interventions --sweep 3f2a...      # one sweep's configurations
  distfair analyze --experiment speech_interventions --metric defense_parity --json | jq .counts

interventions (from each configuration's params): at (1 if an adversarial-training defense with
attack.eps > 0 and a weight λ > 0), tricks (1 if model.name is m5_tricks), noise (1 if
defense.sigma > 0), budget (attack.eps if at, else 0), sigma (defense.sigma). Parity metrics, per attribute, seed-mean:
defense_parity (AUC_acc), clean_group_gap (accuracy parity), fpr_parity (rejection; when recorded).

chance exclusion: a seed run whose clean correct count does not beat 1/K in a one-sided binomial
test (p >= 0.05; n and K from its clean confusion matrix) is left out; a configuration without
any other seed run is excluded. Exclusions are listed in the output.

exit codes: 0 analysed and logged, 2 unknown experiment or sweep, no configuration runs, an
unwritable --output-dir, or bad arguments (nothing was logged).
"""


REPORT_EPILOG = """\
examples:
  distfair report --experiment stability_digits                     # every configuration of an experiment
  distfair report --sweep SWEEP_RUN_ID --baseline pgd_at            # a sweep, against a named configuration
  distfair report --runs RUN_ID RUN_ID --metrics robust_acc,worst_class_acc,nsd --ci
  distfair report --experiment stability_digits --json | jq .rows

rows are configuration runs labelled by the params they differ in (or their distfair.configuration
tag); columns each --metrics entry per evaluation (clean, then each eval attack); cells mean ± std (n)
over the FINISHED seed runs. Comparisons (against --baseline, else each column's best against the
others): Welch's t-test, paired t and Wilcoxon signed-rank when the seeds match, Cohen's d and
Hedges' g, Holm's correction across the report; bold = best and significant after correction;
n <= 5 seeds = low evidence; seeds needed for 80% power at the observed difference.

exit codes: 0 written (and logged), 2 unknown experiment, sweep or run, no configuration runs, an
unknown metric, evaluation or baseline, an unwritable --output-dir, or bad arguments.
"""


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {text!r}")
    return seeds


def _positive(kind: type):
    """argparse type: a number of ``kind`` (int or float) >= 1 for int, > 0 for float."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return value
    return parse


_positive_int, _positive_float = _positive(int), _positive(float)


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return list(dict.fromkeys(names))


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment name (default: the config file's stem)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join ('auto' or host:port); default: start a local Ray instance")
    p.add_argument("--num-cpus", type=_positive_float, metavar="N",
                   help="logical CPUs of the local Ray instance (default: all cores); ignored with --address")
    p.add_argument("--storage-path", metavar="PATH",
                   help="Ray Train storage for checkpoints (default: ./distfair_runs; shared storage on multi-node clusters)")
    p.add_argument("--allow-local", action="store_true",
                   help="with --address: accept a tracking store or storage path on this node's own disk (a "
                        "single-node cluster, or a path you know every node shares); refused otherwise")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout; human-readable output goes to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distfair", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
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

    analyze = sub.add_parser(
        "analyze", help="correlate interventions with parity per attribute across an experiment's configurations",
        description="The speech paper's meta-analysis (paper 003 §5.1): over the configuration runs of an MLflow "
                    "experiment (or of one sweep), the Pearson correlation between each intervention (AT, Tricks, "
                    "noise; budget ε, σ) and each parity metric per attribute, with its spread over seed sets. "
                    "Writes a table, heatmaps, a CSV and a JSON, and logs them as one analysis run in the "
                    "experiment. Reads MLflow only: no Ray, no training.",
        epilog=ANALYZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    analyze.add_argument("--experiment", metavar="NAME", required=True,
                         help="MLflow experiment to analyse (the --experiment of distfair run/sweep, by default "
                              "the config file's stem, e.g. speech_interventions)")
    analyze.add_argument("--sweep", metavar="SWEEP_RUN_ID",
                         help="only the configurations of this sweep (its MLflow sweep run id, printed by "
                              "distfair sweep); default: every configuration run of the experiment")
    analyze.add_argument("--metric", dest="metrics", action="append", metavar="NAME",
                         help="parity metric to correlate (repeatable): defense_parity, clean_group_gap, "
                              "fpr_parity; default: every one the runs recorded")
    analyze.add_argument("--output-dir", metavar="DIR",
                         help="where the files go (default: ./distfair_analysis/<experiment>[-sweep-<id>])")
    analyze.add_argument("--tracking-uri", metavar="URI",
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    analyze.add_argument("--json", action="store_true",
                         help="print exactly one JSON object on stdout; human-readable output goes to stderr")
    analyze.set_defaults(handler=cmd_analyze)

    report = sub.add_parser(
        "report", help="paper-style tables with seed statistics and significance tests, plots, one HTML report",
        description="Compare configurations from their seed runs in MLflow (no Ray, no training): a table of "
                    "mean ± std (n) per configuration and metric, tests against a baseline with Holm's correction, "
                    "the seeds needed for 80% power, and figures (per-class accuracy, stability, seed strips, "
                    "Pareto set, confusion and asymmetry averaged over seeds, per-group values). Writes "
                    "report.html (self-contained), report.md, tables.csv and tables.json, and logs them to the "
                    "sweep run (--sweep) or to a new report run in the experiment.",
        epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = report.add_mutually_exclusive_group()
    scope.add_argument("--sweep", metavar="SWEEP_RUN_ID", help="the configurations of this sweep (its MLflow sweep "
                                                                "run id, printed by distfair sweep)")
    scope.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these configuration runs (parent runs of "
                                                                   "distfair run, or a sweep's configuration runs)")
    report.add_argument("--experiment", metavar="NAME", help="every configuration run of this MLflow experiment "
                                                             "(required unless --sweep or --runs is given)")
    report.add_argument("--metrics", type=_name_list, metavar="M1,M2",
                        help="metrics to tabulate, each per evaluation where it has one (default: robust_acc, "
                             "worst_class_acc, acc_gap, nsd, and auc_acc, defense_parity, auc_fpr, fpr_parity when "
                             "recorded); a full key such as fgsm/worst_class_acc or val_worst_class_acc is one column")
    report.add_argument("--evaluations", type=_name_list, metavar="E1,E2",
                        help="evaluations to show (clean and eval attack names; default: all)")
    report.add_argument("--baseline", metavar="NAME",
                        help="compare against this configuration: a label, key (C1), distfair.configuration tag, "
                             "run id or a differing param value such as a defense name (pgd_at); default: each "
                             "column's best against the others")
    report.add_argument("--ci", action="store_true", help="add the 95%% t-interval of the mean to every cell")
    report.add_argument("--test", choices=("welch", "paired"), default="welch",
                        help="the test whose p-values are Holm-corrected: welch (default) or paired (the paired "
                             "t-test where both configurations ran the same seeds, else Welch)")
    report.add_argument("--alpha", type=_positive_float, default=0.05, metavar="A",
                        help="family-wise significance level (default 0.05)")
    report.add_argument("--output-dir", metavar="DIR", default="report", help="where the files go (default: ./report)")
    report.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")
    report.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    report.add_argument("--json", action="store_true",
                        help="print exactly one JSON object (tables and paths) on stdout; human-readable output goes "
                             "to stderr")
    report.set_defaults(handler=cmd_report)

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

    from distfair.deploy import add_subparser as add_cluster_parser

    add_cluster_parser(sub)

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
    return parser


def _version() -> str:
    from distfair import __version__

    return __version__


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[TextIO]:
    """While enabled, everything written to fd 1 (ours, Ray's log forwarding, C libraries) goes
    to stderr; yields a stream on the real stdout for the one JSON object."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w")
    python_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        yield real
    finally:
        sys.stdout = python_stdout
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.flush()
        real.close()


def _human_output(json_mode: bool):
    """(stream for human-readable output, a ``[distfair]``-prefixed logger writing to it):
    stderr when stdout is reserved for the JSON object, else stdout."""
    human = sys.stderr if json_mode else sys.stdout
    return human, _HumanLog(human)


class _HumanLog:
    """``log(msg)``: one ``[distfair]`` line on ``stream``, the command's only writer to the
    terminal while Ray's output goes to the log file (progress bars draw on ``stream`` too).
    The prefix is coloured only on a terminal, and never when NO_COLOR is set (no-color.org)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.colour = _isatty(stream) and not os.environ.get("NO_COLOR")

    def __call__(self, msg: str) -> None:
        prefix = "\033[36m[distfair]\033[0m" if self.colour else "[distfair]"
        print(f"{prefix} {msg}", file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4f}"


HEADLINE = ("clean_acc", "robust_acc", "clean_worst_class_acc", "worst_class_acc", "acc_gap", "nsd",
            "worst10_acc", "max_asym_gap", "sym_loss", "tgt_max", "tgt_min", "tgt_std", "max_bipartition_asym")
#: the primary attack's subgroup summaries, one row per attribute
SUBGROUP_HEADLINE = ("group_gap/", "max_group_asym/")
#: cross-evaluation summaries' headline metrics, shown when a run has them (speech paper §3)
SUMMARY_HEADLINE = ("auc_acc", "clean_false_rejection_rate", "auc_fpr")
SUMMARY_HEADLINE_FAMILIES = ("defense_parity/", "fpr_parity/")


def _interval(s: dict) -> str:
    """``[low, high]``: the 95% interval the configuration run logs as ``<metric>_ci95_low/_high``."""
    if s.get("ci95_low") is None or s.get("ci95_high") is None:
        return "—"
    return f"[{_fmt(s['ci95_low'])}, {_fmt(s['ci95_high'])}]"


def format_table(metrics: dict[str, dict], extra_attacks: list[str], primary: str | None = None) -> str:
    """The seeds' table of one configuration: per headline metric mean ± std, the 95% interval,
    min, max and n. ``primary``: the first ``eval.attacks`` entry, whose metrics the seed runs
    log bare as well as ``<primary>/<metric>``: its rows are named with it (``robust_acc
    (pgd20)``, ``distfair.results.record.evaluation_label``), as the other attacks' rows are by their
    prefix (``fgsm/robust_acc``). ``worst10_acc`` is left out where it equals
    ``worst_class_acc`` for every seed (always with at most 10 classes)."""
    from distfair.metrics import worst10_is_worst_class
    from distfair.results.record import evaluation_label

    names = [n for n in HEADLINE if n in metrics]
    if "worst10_acc" in names and "worst_class_acc" in metrics and worst10_is_worst_class(
            metrics["worst10_acc"].get("values") or [], metrics["worst_class_acc"].get("values") or []):
        names.remove("worst10_acc")
    names += sorted(n for n in metrics if n.startswith(SUBGROUP_HEADLINE))
    names += [n for n in SUMMARY_HEADLINE if n in metrics]
    names += sorted(n for n in metrics if n.startswith(SUMMARY_HEADLINE_FAMILIES))
    for attack in extra_attacks:
        names += [n for n in (f"{attack}/robust_acc", f"{attack}/worst_class_acc") if n in metrics]
    names += [n for n in ("train_time_s",) if n in metrics]
    labels = {n: evaluation_label(n, metrics, primary) for n in names}
    width = max(len(label) for label in labels.values()) if names else 10
    lines = [f"{'metric':<{width}}  {'mean ± std':>17}  {'95% CI':<18}  {'min':>7}  {'max':>7}  n"]
    for name in names:
        s = metrics[name]
        lines.append(f"{labels[name]:<{width}}  {_fmt(s['mean']):>8} ± {_fmt(s['std']):<6}  {_interval(s):<18}  "
                     f"{_fmt(s['min']):>7}  {_fmt(s['max']):>7}  {s['n']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from distfair.config import ConfigError, load_configurations

    try:
        configurations = load_configurations(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for _, cfg in configurations:
        if args.seeds is not None:
            cfg["seeds"] = args.seeds
        elif args.num_seeds is not None:
            cfg["seeds"] = list(range(args.num_seeds))

    from distfair import tracking
    from distfair.distributed import InsufficientResources, ray_session
    from distfair.distributed.session import session_log_path
    from distfair.experiment.run import (Interrupted, config_hash, default_storage_path, finished_configuration_report,
                              resolve_init_from, resolve_references, run_configuration_with_tracking)

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    experiment = args.experiment or Path(args.config).stem
    storage = args.storage_path or default_storage_path()
    if _refuse_node_local(args, uri, storage) or _refuse_unwritable_storage(args, storage):
        return EXIT_USAGE
    attempts = _earlier_attempts(args, configurations, uri, experiment) if args.resume else {}
    if attempts is None:
        return EXIT_USAGE
    resolved = []
    for name, cfg in configurations:
        try:
            resolved.append((name, cfg, resolve_init_from(cfg, uri, storage), resolve_references(cfg, uri, storage)))
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {args.config}: {'' if name is None else f'configurations.{name}: '}{err}", file=sys.stderr)
            return EXIT_USAGE
    reports = []
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        if len(resolved) > 1:
            log(f"{len(resolved)} configurations: {', '.join(name for name, *_ in resolved)}")
        done = {name for name, attempt in attempts.items() if attempt is not None and attempt.complete}
        train = len(done) < len(resolved)           # --resume of finished configurations: no Ray at all
        if train:
            log_file = session_log_path(storage, f"run-{Path(args.config).stem}")
            log(f"Ray, Tune and worker output: {log_file}")
        try:
            with (ray_session(args.address, num_cpus=args.num_cpus, log_file=log_file) if train
                  else contextlib.nullcontext(None)) as resources:
                if resources is not None:
                    log(f"Ray: {'joined ' + args.address if args.address else 'local instance'} with "
                        f"{ {k: v for k, v in resources.items() if k in ('CPU', 'GPU')} }")
                for name, cfg, init_paths, references in resolved:
                    label = "" if name is None else f"[{name}] "
                    attempt = attempts.get(name)
                    if name in done:
                        log(f"{label}already finished: parent run {attempt.run_id} ({attempt.run_name!r}) has a "
                            f"FINISHED run for every seed {attempt.seeds}; nothing to train")
                        report = finished_configuration_report(cfg, experiment=experiment, tracking_uri=uri,
                                                               parent_run_id=attempt.run_id)
                        reports.append((name, cfg, report))
                        _print_run_report(report, cfg, label, uri, human, final=len(reports) == len(resolved))
                        continue
                    if args.resume:
                        log(f"{label}resuming parent run {attempt.run_id} ({attempt.run_name!r}, {attempt.status}): "
                            f"seeds {attempt.finished} finished, the others are redone" if attempt is not None else
                            f"{label}no earlier run of this configuration: starting it")
                    log(f"{label}{cfg['defense']['name']} on {cfg['dataset']['name']} with {cfg['model']['name']}, "
                        f"seeds {cfg['seeds']}, {cfg['train']['epochs']} epoch(s)")
                    named = {} if name is None else {
                        "parent_run_name": f"{Path(args.config).stem}-{name}-{config_hash(cfg)[:8]}",
                        "extra_tags": {"distfair.configuration": name}}
                    report = run_configuration_with_tracking(
                        cfg, config_path=args.config, experiment=experiment, tracking_uri=uri,
                        storage_path=storage, log=log, init_paths=init_paths, references=references,
                        resume_parent=attempt.run_id if attempt is not None else None, **named)
                    reports.append((name, cfg, report))
                    _print_run_report(report, cfg, label, uri, human, final=len(reports) == len(resolved))
        except InsufficientResources as err:
            print(f"error: {args.config}: scaling: {err}", file=sys.stderr)
            return EXIT_USAGE
        except tracking.TrackingUnavailable as err:
            # Ray is down now: no worker writes any more; what is not logged waits on disk
            print(f"error: {tracking.park_open_runs(uri, storage, str(err))}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as err:
            # the storage filled up or went away mid-run (the log file and Ray Train's checkpoints
            # live there); the runs were marked FAILED on the way out (run_configuration_with_tracking)
            print(f"error: {args.config}: storage path {storage}: {err.strerror or err} while the run was going on; "
                  "its MLflow runs were marked FAILED", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt as err:
            if isinstance(err, Interrupted):
                err.close_again()            # Ray is down now: no worker can reopen a run
            print("interrupted: the runs were marked KILLED in MLflow"
                  + (f" (configurations finished before: {', '.join(str(n) for n, *_ in reports)})" if reports else "")
                  + f"; continue with\n  {_resume_command(args)}", file=sys.stderr)
            return 130
        if args.json:
            if configurations[0][0] is None:
                out.write(json.dumps(_json_safe(reports[0][2].to_json())) + "\n")
            else:
                out.write(json.dumps(_json_safe({"configurations": {name: report.to_json()
                                                                    for name, _, report in reports}})) + "\n")
    return EXIT_FAILED if any(report.errors for *_, report in reports) else EXIT_OK


def _earlier_attempts(args: argparse.Namespace, configurations: list, uri: str, experiment: str) -> dict | None:
    """``distfair run --resume``: ``{configuration name: EarlierAttempt or None}`` (the newest
    attempt of each configuration), or None after printing why there is nothing to resume
    (no earlier run of any configuration, or one that ran other seeds). Reads MLflow only."""
    from distfair.experiment.run import find_earlier_attempt

    missing = f"no earlier run of this configuration in experiment {experiment!r}"
    attempts = {}
    for name, cfg in configurations:
        where = "" if name is None else f"configurations.{name}: "
        try:
            attempts[name] = find_earlier_attempt(cfg, config_path=args.config, experiment=experiment,
                                                  tracking_uri=uri, configuration=name)
        except LookupError as err:        # no store or no such experiment: nothing to resume
            print(f"error: {args.config}: --resume: {missing} ({err})", file=sys.stderr)
            return None
        except ValueError as err:
            print(f"error: {args.config}: --resume: {where}{err}", file=sys.stderr)
            return None
    if not any(attempts.values()):
        print(f"error: {args.config}: --resume: {missing} ({uri}); run it without --resume", file=sys.stderr)
        return None
    return attempts


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

    attacks = [a["name"] for a in cfg["eval"]["attacks"]]
    from distfair.metrics import INTERVAL_NOTE

    print(f"\n{label}{len(report.seeds)}/{len(cfg['seeds'])} seeds finished. Mean ± std across seeds; "
          f"{INTERVAL_NOTE}:\n"
          + format_table(report.metrics, attacks[1:], attacks[0] if attacks else None), file=human)
    for seed, why in sorted(report.errors.items()):
        print(f"{label}seed {seed} FAILED: {why}", file=human)
    print(f"\n{label}MLflow: experiment {report.experiment!r}, parent run {report.parent_run_id}"
          + (f"\nLook at it: {tracking.ui_command(uri, report.experiment_id)}" if final else ""), file=human, flush=True)


def cmd_sweep(args: argparse.Namespace) -> int:
    from distfair.config import ConfigError
    from distfair.experiment.sweep import load_sweep

    try:
        cfg, spec = load_sweep(args.config, num_samples=args.num_samples, num_seeds=args.num_seeds,
                               max_concurrent=args.max_concurrent, overrides=args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE

    from distfair import tracking
    from distfair.distributed import InsufficientResources, ray_session
    from distfair.distributed.session import session_log_path
    from distfair.distributed.sweep import TRIAL_RESOURCE
    from distfair.experiment.run import default_storage_path, resolve_init_from, resolve_references
    from distfair.experiment.sweep import close_interrupted_sweep, run_sweep, sweep_dir_name, sweep_identity

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    experiment = args.experiment or Path(args.config).stem
    storage = args.storage_path or default_storage_path()
    if _refuse_node_local(args, uri, storage) or _refuse_unwritable_storage(args, storage):
        return EXIT_USAGE
    try:
        name = sweep_dir_name(sweep_identity(cfg, spec, args.config), storage, args.resume)
    except FileNotFoundError as err:          # --resume with nothing to resume: nothing started
        print(f"error: {args.config}: --resume: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:                                      # a missing or mismatched checkpoint: before any trial
        resolve_init_from(cfg, uri, storage)
        resolve_references(cfg, uri, storage)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return EXIT_USAGE
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        log_file = session_log_path(storage, f"sweep-{name}")
        log(f"Ray, Tune and worker output: {log_file}")
        try:
            with ray_session(args.address, num_cpus=args.num_cpus, resources={TRIAL_RESOURCE: 1000},
                             log_file=log_file) as cluster:
                report = run_sweep(cfg, spec, name=name, config_path=args.config, experiment=experiment,
                                   tracking_uri=uri, storage_path=storage, resume=args.resume, cluster=cluster,
                                   log=log)
        except InsufficientResources as err:
            print(f"error: {args.config}: scaling: {err}", file=sys.stderr)
            return EXIT_USAGE
        if report.interrupted:
            close_interrupted_sweep(report, uri)       # again, now that Ray is down
            print(f"interrupted: open runs were marked KILLED; continue with\n  distfair sweep {args.config} "
                  f"--resume" + (f" --experiment {args.experiment}" if args.experiment else ""), file=sys.stderr)
            return 130
        print("\n" + format_sweep(report), file=human)
        print(f"\nMLflow: experiment {report.experiment!r}, sweep run {report.sweep_run_id}\n"
              f"Look at it: {tracking.ui_command(uri, report.experiment_id)}", file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe(report.to_json()), default=str) + "\n")
    return EXIT_FAILED if any(t.status == "FAILED" for t in report.trials) else EXIT_OK


def _refuse_unwritable_storage(args: argparse.Namespace, storage: str) -> bool:
    """True, after saying which path and why, when the storage path cannot be written (full,
    read-only, under a file): found by a real probe write before anything starts."""
    from distfair.experiment.run import storage_problem

    problem = storage_problem(storage)
    if problem:
        print(f"error: {args.config}: {problem}", file=sys.stderr)
    return bool(problem)


def _refuse_node_local(args: argparse.Namespace, uri: str, storage: str) -> bool:
    """True, after saying why and what to pass instead, when a command joining a cluster
    (--address, or the driver of a Ray Job) would record its results where only this node sees
    them; ``distfair.distributed.submit`` says what counts as shared."""
    from distfair.distributed.submit import joins_cluster, node_local_problems

    if args.allow_local or not joins_cluster(args.address):
        return False
    problems = node_local_problems(uri, storage)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return bool(problems)


SUBMIT_EPILOG = """\
examples:
  distfair submit run tune_spaces/quickstart.yaml --address http://HEAD:8265 --num-seeds 5 \\
      --tracking-uri http://MLFLOW_HOST:5000 --storage-path /mnt/distfair/runs
  distfair submit sweep tune_spaces/digits_syfar.yaml --address http://HEAD:8265 --num-samples 24 \\
      --tracking-uri http://MLFLOW_HOST:5000 --storage-path /mnt/distfair/runs

--address is the cluster's dashboard (port 8265; e.g. through `ray dashboard cluster/aws.yaml`). Token
auth as for `ray job submit`: the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
The tracking URI and storage path are the cluster's: absolute, and shared by its nodes (or
--allow-local on a single-node cluster); the job checks the storage path's mount again on the head.

exit codes: 0 submitted (follow it with the printed commands), 2 bad arguments, configuration or
paths, or the dashboard could not be reached or refused the job (nothing was submitted).
"""


def cmd_submit(args: argparse.Namespace) -> int:
    # Before Ray is imported: Ray 2.60 `ray start` clusters use token auth (see main)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from distfair.config import ConfigError, load_configurations
    from distfair.distributed.submit import follow_commands, job_entrypoint, submit_job, submit_problems
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


def _analysis_inputs(uri: str, experiment_id: str, configurations: list[dict], log) -> list:
    """``distfair.report.meta_analysis.ConfigurationInput`` of each configuration run: its FINISHED seed
    runs' metrics and clean counts (from their ``confusion_matrices.json``)."""
    from distfair import tracking
    from distfair.report.meta_analysis import ConfigurationInput, SeedInput, clean_counts

    out = []
    for i, config in enumerate(configurations, 1):
        seeds = []
        finished = tracking.finished_seed_runs(uri, experiment_id, config["run_id"])
        for seed, (run_id, metrics) in sorted(finished.items()):
            document = tracking.run_json_artifact(uri, run_id, "confusion_matrices.json")
            counts, missing = None, "the seed run has no confusion_matrices.json artifact"
            if document is not None:
                try:
                    counts, missing = clean_counts(document), None
                except ValueError as err:
                    missing = str(err)
            seeds.append(SeedInput(seed=seed, run_id=run_id, metrics=metrics, counts=counts, counts_missing=missing))
        out.append(ConfigurationInput(run_id=config["run_id"], name=config["name"], params=config["params"],
                                      seeds=seeds))
        if i % 10 == 0 or i == len(configurations):
            log(f"read {i}/{len(configurations)} configuration(s)")
    return out


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


def cmd_analyze(args: argparse.Namespace) -> int:
    from distfair import tracking
    from distfair.report.meta_analysis import PARITY_METRICS, analyze, format_exclusions, format_table, write_outputs
    from distfair.plotting import file_safe

    unknown = [m for m in args.metrics or [] if m not in PARITY_METRICS]
    if unknown:
        print(f"error: --metric: unknown parity metric(s) {', '.join(unknown)}; known: {', '.join(PARITY_METRICS)}",
              file=sys.stderr)
        return EXIT_USAGE
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        experiment_id = tracking.find_experiment(uri, args.experiment)
        if args.sweep:
            tracking.check_sweep_run(uri, experiment_id, args.sweep)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    configurations = tracking.configuration_params(uri, experiment_id, args.sweep)
    if not configurations:
        where = f"sweep run {args.sweep}" if args.sweep else f"experiment {args.experiment!r}"
        print(f"error: {where} has no configuration runs (distfair run / distfair sweep record them)", file=sys.stderr)
        return EXIT_USAGE
    from distfair.data import DATASET_NOTICES

    notices = sorted({DATASET_NOTICES[c["params"].get("dataset.name")] for c in configurations
                      if c["params"].get("dataset.name") in DATASET_NOTICES})
    scope = f"{args.experiment}" + (f"-sweep-{args.sweep[:8]}" if args.sweep else "")
    outdir = Path(args.output_dir or Path("distfair_analysis") / file_safe(scope)).resolve()
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        log(f"experiment {args.experiment!r}" + (f", sweep run {args.sweep}" if args.sweep else "")
            + f": {len(configurations)} configuration run(s) ({uri})")
        result = analyze(_analysis_inputs(uri, experiment_id, configurations, log), parity_metrics=args.metrics)
        try:
            files = write_outputs(result, outdir, title=f"{args.experiment}" + (f" (sweep {args.sweep[:8]})"
                                                                                  if args.sweep else ""))
        except OSError as err:
            print(f"error: --output-dir: cannot write {outdir}: {err}", file=sys.stderr)
            return EXIT_USAGE
        run_id = tracking.log_analysis_run(
            uri, experiment_id, run_name=f"analysis-{scope}",
            params={"sweep_run_id": args.sweep or "all", "parity_metrics": result.parity_metrics,
                    "interventions": list(result.interventions), "chance_alpha": result.alpha,
                    "method": "speech paper 003 §5.1: Pearson over configurations of the seed-mean metric; "
                              "spread over per-seed-set r's (mean, std, 95% t-interval)"},
            metrics=result.mlflow_metrics(), tags={"distfair.report.meta_analysis.sweep": args.sweep or "all",
                                                   **({tracking.TAG_DESCRIPTION: "\n\n".join(notices)}
                                                      if notices else {})},
            artifacts=list(files.values()))
        print("\nPearson correlation, intervention vs parity, across configurations (speech paper 003 §5.1)\n"
              + "".join(f"NOTE: {n}\n" for n in notices)
              + format_exclusions(result) + "\n\n" + format_table(result), file=human)
        print(f"\nFiles: {outdir}/\n" + "\n".join(f"  {p.name}" for p in files.values())
              + f"\nMLflow: experiment {args.experiment!r}, analysis run {run_id}\n"
              f"Look at it: {tracking.ui_command(uri, experiment_id)}", file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe({"analysis_run_id": run_id, "files": {k: str(v) for k, v in files.items()},
                                             "notices": notices, **result.to_json()})) + "\n")
    return EXIT_OK


def _report_scope(args: argparse.Namespace, uri: str) -> tuple[dict, list[dict], list[dict]]:
    """(scope, configuration runs, sweep runs) of a report's arguments, read through
    ``distfair.tracking``. Raises LookupError (or ValueError) with a one-line reason."""
    from distfair import tracking

    if args.sweep:
        sweep = tracking.run_overview(uri, args.sweep)
        if sweep["role"] != "sweep":
            raise LookupError(f"run {args.sweep} is a {sweep['role'] or 'non-distfair'} run, not a sweep run (the top "
                              "run of `distfair sweep`, printed as 'sweep run <id>')")
        if args.experiment and args.experiment != sweep["experiment"]:
            raise LookupError(f"sweep run {args.sweep} is in experiment {sweep['experiment']!r}, not "
                              f"{args.experiment!r}")
        experiment_id = sweep["experiment_id"]
        scope = {"kind": "sweep", "experiment": sweep["experiment"], "experiment_id": experiment_id,
                 "sweep_run_id": args.sweep, "description": f"Sweep {sweep['name']} ({args.sweep}) of experiment "
                                                            f"{sweep['experiment']!r}"}
        return (scope, tracking.report_configurations(uri, experiment_id, args.sweep),
                tracking.sweep_runs(uri, experiment_id, args.sweep))
    if args.runs:
        runs = []
        for run_id in dict.fromkeys(args.runs):
            run = tracking.run_overview(uri, run_id)
            if run["role"] == "seed":
                raise LookupError(f"run {run_id} is a seed run; give its configuration run "
                                  f"{run['tags'].get(tracking.TAG_PARENT)} instead")
            if run["role"] == "sweep":
                raise LookupError(f"run {run_id} is a sweep run; report it with --sweep {run_id}")
            if run["role"] != "configuration":
                raise LookupError(f"run {run_id} is a {run['role'] or 'non-distfair'} run, not a configuration run "
                                  "(the parent run of distfair run, or a sweep's configuration run)")
            runs.append(run)
        experiments = list(dict.fromkeys(r["experiment"] for r in runs))
        sweeps = []
        for experiment_id in dict.fromkeys(r["experiment_id"] for r in runs):
            parents = {r["tags"].get(tracking.TAG_PARENT) for r in runs}
            sweeps += [s for s in tracking.sweep_runs(uri, experiment_id) if s["run_id"] in parents]
        scope = {"kind": "runs", "experiment": runs[0]["experiment"], "experiment_id": runs[0]["experiment_id"],
                 "run_ids": [r["run_id"] for r in runs],
                 "description": f"{len(runs)} configuration run(s) of experiment(s) "
                                + ", ".join(repr(e) for e in experiments)}
        return scope, runs, sweeps
    experiment_id = tracking.find_experiment(uri, args.experiment)
    scope = {"kind": "experiment", "experiment": args.experiment, "experiment_id": experiment_id,
             "description": f"Every configuration run of experiment {args.experiment!r}"}
    return (scope, tracking.report_configurations(uri, experiment_id), tracking.sweep_runs(uri, experiment_id))


def cmd_report(args: argparse.Namespace) -> int:
    import datetime
    import shutil
    import tempfile

    from distfair import __version__, tracking
    from distfair.data import DATASET_NOTICES
    from distfair.plotting import file_safe
    from distfair.report import (FIGURES_DIR, ConfigurationInput, Figure, Report, SweepInput, build_tables,
                                 draw_figures, markdown_tables, report_json, write_report)
    from distfair.report.tables import seed_input

    if not (args.experiment or args.sweep or args.runs):
        print("error: give --experiment NAME, --sweep SWEEP_RUN_ID or --runs RUN_ID ...", file=sys.stderr)
        return EXIT_USAGE
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        scope, configurations, sweeps = _report_scope(args, uri)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not configurations:
        where = f"sweep run {args.sweep}" if args.sweep else f"experiment {scope['experiment']!r}"
        print(f"error: {where} has no configuration runs (distfair run / distfair sweep record them)", file=sys.stderr)
        return EXIT_USAGE
    outdir = Path(args.output_dir).resolve()
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        log(f"{scope['description']}: {len(configurations)} configuration run(s) ({uri})")
        inputs = []
        for i, c in enumerate(configurations, 1):
            seeds = [seed_input(s["seed"], s["run_id"], s["metrics"], record=s["record"],
                                per_class_acc=s["per_class_acc"], confusion=s["confusion"])
                     for s in tracking.report_seed_runs(uri, c["experiment_id"], c["run_id"])]
            inputs.append(ConfigurationInput(run_id=c["run_id"], name=c["name"], status=c["status"],
                                             params=c["params"], tags=c["tags"], seeds=seeds,
                                             experiment=c["experiment"]))
            if i % 10 == 0 or i == len(configurations):
                log(f"read {i}/{len(configurations)} configuration(s)")
        try:
            tables = build_tables(inputs, metrics=args.metrics, evaluations=args.evaluations, baseline=args.baseline,
                                  test=args.test, alpha=args.alpha,
                                  sweeps=[SweepInput(run_id=s["run_id"], name=s["name"], objective=s["objective"],
                                                     best_params=s["best_params"], pareto_run_ids=s["pareto_run_ids"])
                                          for s in sweeps])
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        try:
            (outdir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"error: --output-dir: cannot write {outdir}: {err.strerror or err}", file=sys.stderr)
            return EXIT_USAGE
        figures = draw_figures(tables, outdir / FIGURES_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            analysis = tracking.latest_analysis_images(uri, scope["experiment_id"], Path(tmp))
            if analysis is not None:
                analysis_id, paths = analysis
                for path in paths:
                    name = f"analysis_{file_safe(path.name)}"
                    shutil.copyfile(path, outdir / FIGURES_DIR / name)
                    figures.append(Figure(name, f"Meta-analysis: {path.stem}",
                                          f"From the newest analysis run {analysis_id} of the experiment (distfair "
                                          "analyze: Pearson r between interventions and parity per attribute, speech "
                                          "paper 003 §5.1).", outdir / FIGURES_DIR / name))
        notices = sorted({DATASET_NOTICES[c.params.get("dataset.name")] for c in inputs
                          if c.params.get("dataset.name") in DATASET_NOTICES})
        title = ("distfair report: " + (f"sweep {args.sweep[:8]} of {scope['experiment']}" if args.sweep else
                                        f"{len(inputs)} runs" if args.runs else f"experiment {scope['experiment']}"))
        report = Report(title=title, scope={k: v for k, v in scope.items() if k != "experiment_id"}, tables=tables,
                        figures=figures, created=datetime.datetime.now(datetime.timezone.utc).strftime(
                            "%Y-%m-%d %H:%M UTC"), tracking_uri=uri, notices=notices, show_ci=args.ci,
                        distfair_version=__version__)
        try:
            files = write_report(report, outdir)
        except OSError as err:
            print(f"error: --output-dir: cannot write {outdir}: {err.strerror or err}", file=sys.stderr)
            return EXIT_USAGE
        logged = None
        if not args.no_log:
            run_id, folder = tracking.log_report(
                uri, scope["experiment_id"], list(files.values()), [f.path for f in figures],
                sweep_run_id=args.sweep, run_name=f"report-{file_safe(scope['experiment'])}"
                + (f"-{len(inputs)}-runs" if args.runs else ""),
                params={"scope": scope["kind"], "baseline": args.baseline or "none (best vs others)",
                        "metrics": [c.name for c in tables.columns], "test": args.test, "alpha": args.alpha,
                        "n_configurations": len(inputs), **({"run_ids": scope["run_ids"]} if args.runs else {})},
                tags={"distfair.report.scope": scope["kind"]}, description=markdown_tables(report))
            logged = {"run_id": run_id, "artifact_path": folder}
        print("\n" + markdown_tables(report), file=human)
        print(f"\nFiles: {outdir}/\n" + "\n".join(f"  {p.name}" for p in files.values())
              + f"\n  {FIGURES_DIR}/ ({len(figures)} figure(s))", file=human)
        if logged:
            where = (f"sweep run {logged['run_id']}, artifacts under report/" if args.sweep
                     else f"report run {logged['run_id']}")
            print(f"MLflow: experiment {scope['experiment']!r}, {where}\n"
                  f"Look at it: {tracking.ui_command(uri, scope['experiment_id'])}", file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe({"files": {k: str(v) for k, v in files.items()},
                                             "figures_dir": str(outdir / FIGURES_DIR), "logged": logged,
                                             **report_json(report)}), allow_nan=False) + "\n")
    return EXIT_OK


def format_sweep(report) -> str:
    from distfair.config.space import matching_test_metric, stat_name
    from distfair.experiment.sweep import objective_metrics, objective_on_test, spread_text

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


def _json_safe(obj):
    """NaN/inf are not JSON: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "address", None):
        # Before anything imports Ray: a driver joining a `ray start` cluster must use the
        # token auth mode that Ray 2.60 clusters have by default (docs/ray-notes.md).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        return args.handler(args)
    except Exception as err:
        # imported only here: importing the tracking package imports MLflow, which a command
        # refusing a bad file must not pay for
        from distfair.tracking.buffer import TrackingUnavailable

        if not isinstance(err, TrackingUnavailable):   # any command whose tracking server stayed away
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
