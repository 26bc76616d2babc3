"""``distfair report``: the configurations of an experiment, a sweep or a list of runs, read
from MLflow (``distfair.tracking``), compared by ``distfair.report`` and written out; the files
logged to the sweep run or to a new report run. No Ray, no training.

:func:`plan_report` finds what the report covers; :func:`make_report` reads the seed runs,
builds the tables and figures, writes the files and logs them. Both raise
:class:`~distfair.experiment.errors.Refused` (nothing logged).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.experiment.errors import Refused


@dataclass
class ReportRequest:
    """What ``distfair report`` was asked."""
    experiment: str | None = None
    sweep: str | None = None
    runs: list[str] | None = None
    metrics: list[str] | None = None
    evaluations: list[str] | None = None
    baseline: str | None = None
    ci: bool = False
    test: str = "welch"
    alpha: float = 0.05
    output_dir: str = "report"
    no_log: bool = False
    tracking_uri: str | None = None


@dataclass
class ReportPlan:
    request: ReportRequest
    tracking_uri: str
    scope: dict
    configurations: list[dict]
    sweeps: list[dict]


@dataclass
class ReportOutcome:
    """The report (``distfair.report.Report``), its files and figures, and where it was logged
    (``{"run_id", "artifact_path"}``, None with ``no_log``)."""
    report: object
    outdir: Path
    files: dict[str, Path]
    figures: list = field(default_factory=list)
    logged: dict | None = None


def report_scope(args: ReportRequest, uri: str) -> tuple[dict, list[dict], list[dict]]:
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


def plan_report(request: ReportRequest) -> ReportPlan:
    """The report's scope and its configuration and sweep runs; raises :class:`Refused` when
    there is no scope, an unknown experiment, sweep or run, or no configuration runs."""
    from distfair import tracking

    if not (request.experiment or request.sweep or request.runs):
        raise Refused("give --experiment NAME, --sweep SWEEP_RUN_ID or --runs RUN_ID ...")
    uri = tracking.resolve_tracking_uri(request.tracking_uri)
    try:
        scope, configurations, sweeps = report_scope(request, uri)
    except LookupError as err:
        raise Refused(str(err)) from None
    if not configurations:
        where = f"sweep run {request.sweep}" if request.sweep else f"experiment {scope['experiment']!r}"
        raise Refused(f"{where} has no configuration runs (distfair run / distfair sweep record them)")
    return ReportPlan(request=request, tracking_uri=uri, scope=scope, configurations=configurations, sweeps=sweeps)


def make_report(plan: ReportPlan, *, log: Callable[[str], None]) -> ReportOutcome:
    """Read every configuration's seed runs, build the tables and figures (and the newest
    analysis run's images), write the files under the output folder and, unless ``no_log``,
    log them. Raises :class:`Refused` (an unknown metric, evaluation or baseline; an
    unwritable output folder)."""
    import datetime
    import shutil
    import tempfile

    from distfair import __version__, tracking
    from distfair.data import DATASET_NOTICES
    from distfair.plotting import file_safe
    from distfair.report import (FIGURES_DIR, ConfigurationInput, Figure, Report, SweepInput, build_tables,
                                 draw_figures, markdown_tables, write_report)
    from distfair.report.tables import seed_input

    args, uri, scope, configurations, sweeps = plan.request, plan.tracking_uri, plan.scope, plan.configurations, \
        plan.sweeps
    outdir = Path(args.output_dir).resolve()
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
        raise Refused(str(err)) from None
    try:
        (outdir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Refused(f"--output-dir: cannot write {outdir}: {err.strerror or err}") from None
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
        raise Refused(f"--output-dir: cannot write {outdir}: {err.strerror or err}") from None
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
    return ReportOutcome(report=report, outdir=outdir, files=files, figures=figures, logged=logged)
