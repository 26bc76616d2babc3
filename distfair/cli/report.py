"""``distfair report``: parse, call ``distfair.experiment.reporting``, print the tables and
where the files went, map its exceptions to exit codes."""
from __future__ import annotations

import argparse
import json

from distfair.cli.args import _name_list, _positive_float
from distfair.cli.output import EXIT_OK, _human_output, _json_safe, fail, stdout_to_stderr
from distfair.experiment.errors import Refused

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


def add_parser(sub) -> argparse.ArgumentParser:
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
    return report


def cmd_report(args: argparse.Namespace) -> int:
    from distfair.experiment.reporting import ReportRequest, make_report, plan_report

    request = ReportRequest(experiment=args.experiment, sweep=args.sweep, runs=args.runs, metrics=args.metrics,
                            evaluations=args.evaluations, baseline=args.baseline, ci=args.ci, test=args.test,
                            alpha=args.alpha, output_dir=args.output_dir, no_log=args.no_log,
                            tracking_uri=args.tracking_uri)
    try:
        plan = plan_report(request)
    except Refused as err:
        return fail(err)

    from distfair import tracking
    from distfair.report import FIGURES_DIR, markdown_tables, report_json

    scope = plan.scope
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        try:
            made = make_report(plan, log=log)
        except Refused as err:
            return fail(err)
        report, outdir, files, figures, logged = made.report, made.outdir, made.files, made.figures, made.logged
        print("\n" + markdown_tables(report), file=human)
        print(f"\nFiles: {outdir}/\n" + "\n".join(f"  {p.name}" for p in files.values())
              + f"\n  {FIGURES_DIR}/ ({len(figures)} figure(s))", file=human)
        if logged:
            where = (f"sweep run {logged['run_id']}, artifacts under report/" if args.sweep
                     else f"report run {logged['run_id']}")
            print(f"MLflow: experiment {scope['experiment']!r}, {where}\n"
                  f"Look at it: {tracking.ui_command(plan.tracking_uri, scope['experiment_id'])}", file=human,
                  flush=True)
        if args.json:
            out.write(json.dumps(_json_safe({"files": {k: str(v) for k, v in files.items()},
                                             "figures_dir": str(outdir / FIGURES_DIR), "logged": logged,
                                             **report_json(report)}), allow_nan=False) + "\n")
    return EXIT_OK
