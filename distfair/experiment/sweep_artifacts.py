"""The sweep run's artifacts: the trials table, the Optuna study (SQLite) and its history
plot, and for multi-objective searches the Pareto set as JSON and a plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from distfair.config.space import Target, optuna_distribution
from distfair.results.names import matching_test_metric
from distfair.experiment.sweep_results import (SweepReport, TrialOutcome, _on_test, objective_on_test,
                                               spread_columns)


def sweep_artifacts(report: SweepReport, targets: list[Target], tmp: Path) -> dict[str, Path]:
    """Trials table, Optuna study (SQLite) and its history plot, Pareto JSON and plot."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna

    files: dict[str, Path] = {}
    table = tmp / "trials.csv"
    keys = sorted({k for t in report.trials for k in t.params})
    # the objective (validation) columns, then the same statistics on the test set, then the
    # spread of every objective metric on validation and of its test counterpart (labelled
    # test:, never used to choose); a column already written is not repeated
    columns: dict[str, Callable[[TrialOutcome], object]] = {}
    for i, target in enumerate(targets):
        columns.setdefault(target.name, lambda t, i=i: t.objective[i])
    for target in targets:
        if matching_test_metric(target.metric):
            columns.setdefault(f"test:{_on_test(target).name}", lambda t, g=target: objective_on_test(g, t))
    for column, family, metric, stat in spread_columns(targets):
        columns.setdefault(column, lambda t, f=family, m=metric, s=stat: t.spread(f, m)[s])
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "parent_run_id", "status", *keys, *columns, "n_seeds", "failure"])
        for t in report.trials:
            writer.writerow([t.trial_id, t.parent_run_id, t.status, *(t.params.get(k) for k in keys),
                             *(get(t) for get in columns.values()), t.metrics.get("n_seeds"), t.failure])
    files["study"] = table
    storage = f"sqlite:///{tmp / 'optuna_study.db'}"
    study = optuna.create_study(storage=storage, study_name="distfair",
                                directions=["maximize" if t.mode == "max" else "minimize" for t in targets])
    dims = {d.key: d for d in report.spec.dims + report.spec.grid}
    for t in report.trials:
        ok = t.status == "FINISHED" and all(v is not None for v in t.objective)
        dists = {k: optuna_distribution(dims[k]) for k in t.params if k in dims}
        study.add_trial(optuna.trial.create_trial(
            params={k: v for k, v in t.params.items() if k in dists}, distributions=dists,
            values=t.objective if ok else None,
            user_attrs={"parent_run_id": t.parent_run_id, **({"failure": t.failure} if t.failure else {})},
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
    files["study_db"] = tmp / "optuna_study.db"
    history_plot(report, targets, tmp / "history.png")
    files["history_png"] = tmp / "history.png"
    if len(targets) > 1:
        (tmp / "pareto.json").write_text(json.dumps(report.to_json()["pareto"], indent=1, default=str))
        files["pareto"] = tmp / "pareto.json"
        fig, ax = plt.subplots(figsize=(5, 4))
        pts = [t for t in report.trials if all(v is not None for v in t.objective[:2])]
        front_ids = {t.parent_run_id for t in report.pareto}
        ax.scatter([t.objective[0] for t in pts], [t.objective[1] for t in pts], c="lightgray", label="configurations")
        ax.scatter([t.objective[0] for t in report.pareto], [t.objective[1] for t in report.pareto], c="C3",
                   label="Pareto set")
        ax.set_xlabel(f"{targets[0].name} ({targets[0].mode})")
        ax.set_ylabel(f"{targets[1].name} ({targets[1].mode})")
        ax.legend()
        ax.set_title(f"{len(front_ids)} non-dominated of {len(pts)}")
        fig.tight_layout()
        fig.savefig(tmp / "pareto.png", dpi=110)
        plt.close(fig)
        files["pareto_png"] = tmp / "pareto.png"
    return files


def history_plot(report: SweepReport, targets: list[Target], path: Path) -> Path:
    """``history.png``: :func:`history_figure` saved."""
    fig = history_figure(report, targets)
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_figure(report: SweepReport, targets: list[Target]):
    """The sweep's history on its first objective target: per configuration (x: trial order,
    ticks labelled with the trial ids) every seed's value of the target's validation metric
    (points), their mean ± sample std (whiskers), the target's statistic (cross), the running
    best of that statistic over the configurations so far (step line) and the chosen
    configuration (ringed). Selection is on validation only: no test value is drawn."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    target = targets[0]
    metric = target.metric
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(report.trials) + 2), 4.5))
    best_id = report.best.parent_run_id if report.best else None
    running, best_so_far = [], None
    sign = 1.0 if target.mode == "max" else -1.0
    for x, t in enumerate(report.trials):
        values = list(t.seed_values.get(metric, {}).values())
        ax.scatter([x] * len(values), values, s=14, color="C0", alpha=0.6, zorder=3, gid="seeds",
                   label=f"{metric} per seed" if x == 0 else None)
        s = t.spread("validation", metric)
        if s["mean"] is not None:
            bars = ax.errorbar([x], [s["mean"]], yerr=[[s["std"] or 0.0], [s["std"] or 0.0]], fmt="_", color="k",
                               capsize=4, markersize=12, zorder=4, label="mean ± std" if x == 0 else None)
            bars.lines[0].set_gid("mean")
            bars.lines[2][0].set_gid("std")
        value = t.objective[0]
        if value is not None and t.status == "FINISHED":
            ax.scatter([x], [value], marker="x", color="C1", zorder=5, gid="objective",
                       label=target.name if x == 0 else None)
            if best_so_far is None or sign * value > sign * best_so_far:
                best_so_far = value
        running.append(best_so_far)
        if t.parent_run_id == best_id and value is not None:
            ax.scatter([x], [value], s=220, facecolors="none", edgecolors="C3", linewidths=2, zorder=6,
                       gid="chosen", label="chosen (on validation)")
    if any(v is not None for v in running):
        ax.step(range(len(running)), [float("nan") if v is None else v for v in running], where="post",
                color="C2", gid="running_best", label=f"running best {target.name}")
    ax.set_xlim(-0.5, max(len(report.trials), 1) - 0.5)
    ax.set_xticks(range(len(report.trials)))
    ax.set_xticklabels([t.trial_id or str(i) for i, t in enumerate(report.trials)], rotation=45, ha="right",
                       fontsize=7)
    ax.set_xlabel("configuration (trial id, in trial order)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title(f"Sweep history: {target.mode} {target.name}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
