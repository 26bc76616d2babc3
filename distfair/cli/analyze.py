"""``distfair analyze``: parse, call ``distfair.experiment.analysis``, print the correlation
table and where the files went, map its exceptions to exit codes."""
from __future__ import annotations

import argparse
import json

from distfair.cli.output import EXIT_OK, _human_output, _json_safe, fail, stdout_to_stderr
from distfair.experiment.errors import Refused

ANALYZE_EPILOG = """\
examples:
  distfair analyze --experiment speech_interventions
  distfair analyze --experiment speech_interventions --sweep 3f2a...      # one sweep's configurations
  distfair analyze --experiment speech_interventions --metric defense_parity --json | jq .counts

interventions (from each configuration's params): at (1 if an adversarial-training defense with
attack.eps > 0 and a weight λ > 0), tricks (1 if model.name is m5_tricks), noise (1 if
defense.sigma > 0), budget (attack.eps if at, else 0), sigma (defense.sigma). Parity metrics, per attribute, seed-mean:
defense_parity (AUC_acc), clean_group_gap (accuracy parity), fpr_parity (rejection; when recorded).

training-set representation (speech paper 003 §5.2.2; when the runs logged group_train_n, i.e.
each group's training-set size): per configuration and attribute, Pearson r over the groups between
the training-set size and the group's AUC_FPR (group_auc_fpr), with Spearman's rho beside it, and
its mean ± std over configurations; its p's join the same Holm family.

statistics: r over configurations with its 95% Fisher-z interval; Holm's correction over every
defined correlation of the analysis (p (Holm), * = significant at 0.05: claim only those). The
per-seed-set r's are descriptive (mean ± std), not an interval.

chance exclusion (--chance-rule): "majority" (default) leaves out a seed run whose clean accuracy
is not above the test set's majority-class rate (correct <= the largest class's support, from its
clean confusion matrix): this reproduces the speech paper's 15/40 (AudioMNIST) and 6/40 (Common
Voice) from its Tables 1-2. "binomial" (the former rule) leaves it out when a one-sided binomial
test against 1/K gives p >= 0.05 (17/40 and 4/40 on those tables; a majority-class predictor on
imbalanced classes passes it). A configuration without any other seed run is excluded.
Exclusions are listed in the output.

exit codes: 0 analysed and logged, 2 unknown experiment or sweep, no configuration runs, an
unwritable --output-dir, or bad arguments (nothing was logged).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    analyze = sub.add_parser(
        "analyze", help="correlate interventions with parity per attribute across an experiment's configurations",
        description="The speech paper's meta-analysis (paper 003 §5.1): over the configuration runs of an MLflow "
                    "experiment (or of one sweep), the Pearson correlation between each intervention (AT, Tricks, "
                    "noise; budget ε, σ) and each parity metric per attribute, with its Fisher-z interval and "
                    "Holm's correction across the analysis. "
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
    analyze.add_argument("--chance-rule", metavar="RULE", default="majority",
                         help="when a seed run is at chance and left out: 'majority' (default): clean accuracy not "
                              "above the test set's majority-class rate (reproduces the paper's 15/40 and 6/40); "
                              "'binomial': one-sided binomial test against 1/K, p >= 0.05")
    analyze.add_argument("--output-dir", metavar="DIR",
                         help="where the files go (default: ./distfair_analysis/<experiment>[-sweep-<id>])")
    analyze.add_argument("--tracking-uri", metavar="URI",
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    analyze.add_argument("--json", action="store_true",
                         help="print exactly one JSON object on stdout; human-readable output goes to stderr")
    analyze.set_defaults(handler=cmd_analyze)
    return analyze


def cmd_analyze(args: argparse.Namespace) -> int:
    from distfair.experiment.analysis import AnalysisRequest, plan_analysis, run_analysis

    request = AnalysisRequest(experiment=args.experiment, sweep=args.sweep, metrics=args.metrics,
                              output_dir=args.output_dir, tracking_uri=args.tracking_uri,
                              chance_rule=args.chance_rule)
    try:
        plan = plan_analysis(request)
    except Refused as err:
        return fail(err)

    from distfair import tracking
    from distfair.report.meta_analysis_output import format_exclusions, format_representation, format_table

    uri, experiment_id, outdir = plan.tracking_uri, plan.experiment_id, plan.outdir
    with stdout_to_stderr(args.json) as out:
        human, log = _human_output(args.json)
        try:
            done = run_analysis(plan, log=log)
        except Refused as err:
            return fail(err)
        result, files, run_id, notices = done.result, done.files, done.run_id, done.notices
        print("\nPearson correlation, intervention vs parity, across configurations (speech paper 003 §5.1)\n"
              + "".join(f"NOTE: {n}\n" for n in notices)
              + format_exclusions(result) + "\n\n" + format_table(result), file=human)
        if result.representation:
            print("\n" + format_representation(result), file=human)
        print(f"\nFiles: {outdir}/\n" + "\n".join(f"  {p.name}" for p in files.values())
              + f"\nMLflow: experiment {args.experiment!r}, analysis run {run_id}\n"
              f"Look at it: {tracking.ui_command(uri, experiment_id)}", file=human, flush=True)
        if args.json:
            out.write(json.dumps(_json_safe({"analysis_run_id": run_id, "files": {k: str(v) for k, v in files.items()},
                                             "notices": notices, **result.to_json()})) + "\n")
    return EXIT_OK
