"""``distfair analyze``: the speech paper's meta-analysis (``distfair.report.meta_analysis``)
over the configuration runs of an experiment or a sweep, read from MLflow; its files written
and logged as one analysis run. No Ray, no training.

:func:`plan_analysis` finds the configurations; :func:`run_analysis` reads their seed runs
(:func:`analysis_inputs`), analyses, writes and logs. Both raise
:class:`~distfair.experiment.errors.Refused` (nothing logged).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.experiment.errors import Refused


@dataclass
class AnalysisRequest:
    """What ``distfair analyze`` was asked."""
    experiment: str
    sweep: str | None = None
    metrics: list[str] | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None
    #: the chance-level rule (``distfair.report.meta_analysis.CHANCE_RULES``): "majority" (default) or "binomial"
    chance_rule: str = "majority"


@dataclass
class AnalysisPlan:
    request: AnalysisRequest
    tracking_uri: str
    experiment_id: str
    configurations: list[dict]
    notices: list[str]
    outdir: Path


@dataclass
class AnalysisOutcome:
    """The meta-analysis result, its files and the analysis run they were logged to."""
    result: object
    files: dict[str, Path]
    run_id: str
    notices: list[str] = field(default_factory=list)


def analysis_inputs(uri: str, experiment_id: str, configurations: list[dict], log) -> list:
    """``distfair.report.meta_analysis.ConfigurationInput`` of each configuration run: its FINISHED seed
    runs' metrics and clean counts (correct, samples per true class: from their ``confusion_matrices.json``)."""
    from distfair import tracking
    from distfair.defenses import DEFENSES
    from distfair.report.meta_analysis import ConfigurationInput, SeedInput, clean_counts, declared_traits

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
                                      seeds=seeds, defense=declared_traits(config["params"], DEFENSES)))
        if i % 10 == 0 or i == len(configurations):
            log(f"read {i}/{len(configurations)} configuration(s)")
    return out


def plan_analysis(request: AnalysisRequest) -> AnalysisPlan:
    """The experiment (and sweep) and its configuration runs; raises :class:`Refused` for an
    unknown parity metric or chance rule, experiment or sweep, or no configuration runs."""
    from distfair import tracking
    from distfair.plotting import file_safe
    from distfair.report.meta_analysis import CHANCE_RULES, PARITY_METRICS

    args = request
    if args.chance_rule not in CHANCE_RULES:
        raise Refused(f"--chance-rule: unknown rule {args.chance_rule!r}; known: {', '.join(CHANCE_RULES)}")
    unknown = [m for m in args.metrics or [] if m not in PARITY_METRICS]
    if unknown:
        raise Refused(f"--metric: unknown parity metric(s) {', '.join(unknown)}; known: {', '.join(PARITY_METRICS)}")
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        experiment_id = tracking.find_experiment(uri, args.experiment)
        if args.sweep:
            tracking.check_sweep_run(uri, experiment_id, args.sweep)
    except LookupError as err:
        raise Refused(str(err)) from None
    configurations = tracking.configuration_params(uri, experiment_id, args.sweep)
    if not configurations:
        where = f"sweep run {args.sweep}" if args.sweep else f"experiment {args.experiment!r}"
        raise Refused(f"{where} has no configuration runs (distfair run / distfair sweep record them)")
    from distfair.data import DATASET_NOTICES

    notices = sorted({DATASET_NOTICES[c["params"].get("dataset.name")] for c in configurations
                      if c["params"].get("dataset.name") in DATASET_NOTICES})
    scope = f"{args.experiment}" + (f"-sweep-{args.sweep[:8]}" if args.sweep else "")
    outdir = Path(args.output_dir or Path("distfair_analysis") / file_safe(scope)).resolve()
    return AnalysisPlan(request=request, tracking_uri=uri, experiment_id=experiment_id,
                        configurations=configurations, notices=notices, outdir=outdir)


def run_analysis(plan: AnalysisPlan, *, log: Callable[[str], None]) -> AnalysisOutcome:
    """Read, analyse, write the files under the plan's folder and log them as an analysis run.
    Raises :class:`Refused` when the folder cannot be written (nothing logged)."""
    from distfair import tracking
    from distfair.report.meta_analysis import analyze
    from distfair.report.meta_analysis_output import write_outputs

    args, uri, experiment_id, configurations = plan.request, plan.tracking_uri, plan.experiment_id, \
        plan.configurations
    notices, outdir = plan.notices, plan.outdir
    scope = f"{args.experiment}" + (f"-sweep-{args.sweep[:8]}" if args.sweep else "")
    log(f"experiment {args.experiment!r}" + (f", sweep run {args.sweep}" if args.sweep else "")
        + f": {len(configurations)} configuration run(s) ({uri})")
    result = analyze(analysis_inputs(uri, experiment_id, configurations, log), parity_metrics=args.metrics,
                     chance_rule=args.chance_rule)
    try:
        files = write_outputs(result, outdir, title=f"{args.experiment}" + (f" (sweep {args.sweep[:8]})"
                                                                          if args.sweep else ""))
    except OSError as err:
        raise Refused(f"--output-dir: cannot write {outdir}: {err}") from None
    run_id = tracking.log_analysis_run(
        uri, experiment_id, run_name=f"analysis-{scope}",
        params={"sweep_run_id": args.sweep or "all", "parity_metrics": result.parity_metrics,
                "interventions": list(result.interventions), "chance_rule": result.chance_rule,
                "chance_alpha": result.alpha,
                "method": "speech paper 003 §5.1: Pearson over configurations of the seed-mean metric, 95% "
                          "Fisher-z interval, Holm's correction over the analysis's correlations; per-seed-set "
                          "r's descriptive (mean, std); §5.2.2: per configuration and attribute, Pearson over the "
                          "groups of training-set size vs AUC_FPR, in the same Holm family"},
        metrics=result.mlflow_metrics(), tags={"distfair.report.meta_analysis.sweep": args.sweep or "all",
                                               **({tracking.TAG_DESCRIPTION: "\n\n".join(notices)}
                                                  if notices else {})},
        artifacts=list(files.values()))
    return AnalysisOutcome(result=result, files=files, run_id=run_id, notices=notices)
