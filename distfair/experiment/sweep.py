"""``distfair sweep``: search a configuration's ``space`` with Ray Tune + Optuna, every
configuration repeated over seeds and judged on the distribution of its seeds.

MLflow record: a **sweep run** (the sweep file, sampler, objective; at the end the best
configuration as ``best.*`` params and metrics, the trials table, the Optuna study and its
history plot, and for multi-objective searches the Pareto set as JSON and a plot) → one
**configuration run** per trial (``distfair run``'s parent) → one **seed run** per seed.
Everything reported at the end is recomputed from the seed runs MLflow holds.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair import tracking
from distfair.config import ConfigError, apply_overrides, flatten, parse_override, read_document, validate
from distfair.metrics import aggregate_seed_metrics
from distfair.experiment.run import RunReport, run_configuration_with_tracking
from distfair.config.space import (SweepSpec, Target, matching_test_metric, metric_role, objective_values,
                                   optuna_distribution, parse_space, pareto_front, stat_name)

#: the statistics over seeds reported per metric for every configuration: those of the MLflow
#: configuration runs (``distfair.tracking.log_parent_summary``), named the same way
#: (``<metric>_<stat>``); the 95% interval is Student's t on the seeds (``distfair.metrics.summarize``)
SUMMARY_STATS = ("mean", "std", "min", "max", "ci95_low", "ci95_high")
#: the spread of an objective metric (and of its test counterpart) in trials.csv and the summary
SPREAD_STATS = ("mean", "std", "n", "ci95_low", "ci95_high")


@dataclass
class TrialOutcome:
    trial_id: str
    params: dict
    parent_run_id: str
    status: str
    metrics: dict[str, float | None]             # objective values + <metric>_<stat> summaries
    objective: list[float | None]
    #: {metric: {stat: value}} (SUMMARY_STATS and n) over the finished seeds, split by what the
    #: metric was measured on: "validation" (val_*: what the sweep selects on) and "test"
    #: (reported, never selected on)
    validation: dict[str, dict[str, float | None]] = field(default_factory=dict)
    test: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: each objective target's statistic of the matching test metric (``val_robust_acc`` →
    #: ``robust_acc``), reported beside the validation value; None where there is none
    objective_test: dict[str, float | None] = field(default_factory=dict)    # target name -> value
    #: {metric: {seed: value}} of the objective metrics and their test counterparts
    seed_values: dict[str, dict[int, float]] = field(default_factory=dict)
    #: why the configuration failed (its run's ``distfair.failure_reason``: ``seed 2: loss is nan
    #: at epoch 1, batch 3``); "" when it did not. A failed configuration is never chosen.
    failure: str = ""

    def spread(self, family: str, metric: str) -> dict[str, float | None]:
        """``{mean, std, n, ci95_low, ci95_high}`` of ``metric`` on ``family`` (validation or
        test) over the finished seeds; None values (n = 0) where the metric was not recorded."""
        found = (self.validation if family == "validation" else self.test).get(metric) or {}
        return {stat: found.get(stat, 0 if stat == "n" else None) for stat in SPREAD_STATS}

    def to_json(self, targets: list[Target]) -> dict:
        return {"params": self.params, "parent_run_id": self.parent_run_id, "status": self.status,
                "n_seeds": self.metrics.get("n_seeds"), "failure": self.failure,
                "objective": {t.name: v for t, v in zip(targets, self.objective)},
                "validation": self.validation, "test": self.test}


@dataclass
class SweepReport:
    experiment: str
    sweep_run_id: str
    spec: SweepSpec
    experiment_id: str = ""
    trials: list[TrialOutcome] = field(default_factory=list)
    best: TrialOutcome | None = None
    pareto: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> dict:
        """The sweep for ``--json``. Each configuration carries its objective values (computed
        from validation metrics only), then ``validation`` and ``test`` summaries kept apart:
        ``best`` was chosen on the former; the latter is what it scores on the test set."""
        targets = self.spec.objective
        best = None
        if self.best:
            best = {"selected_on": "validation", **self.best.to_json(targets)}
        return {"experiment": self.experiment, "sweep_run_id": self.sweep_run_id,
                "objective": [t.__dict__ for t in targets], "selected_on": "validation", "best": best,
                "pareto": [t.to_json(targets) for t in self.pareto],
                "trials": [t.to_json(targets) for t in self.trials]}


def load_sweep(path: str, *, num_samples: int | None = None, num_seeds: int | None = None,
               max_concurrent: int | None = None, overrides: list[str] | None = None) -> tuple[dict, SweepSpec]:
    """Validate the file and its ``space`` block; every dimension's extreme values and choices
    are checked against the config validator too. ``overrides``: ``--set key.path=value``
    applied to the file first (e.g. ``defense.teacher=<run id>``). Raises ConfigError with
    every problem."""
    raw = read_document(path)
    if "configurations" in raw:
        raise ConfigError(path, [("configurations", "lists configurations for `distfair run` to compare; a sweep "
                                                    "searches `space` instead (remove one of the two)")])
    if overrides:
        try:
            raw = apply_overrides(raw, [parse_override(o) for o in overrides])
        except ValueError as err:
            raise ConfigError(path, [("--set", str(err))]) from err
        path = f"{path} (with --set {' '.join(overrides)})"
    if num_seeds is not None:
        raw["seeds"] = num_seeds
    cfg = validate(raw, path)
    eval_names = [a["name"] for a in cfg["eval"]["attacks"]]
    spec, problems = parse_space(cfg["space"], config_keys=set(flatten(cfg)), eval_names=eval_names)
    spec.base = {k: v for k, v in raw.items() if k != "space"}
    for dim in spec.dims + spec.grid:
        values = list(dim.choices) if dim.choices else [dim.low, dim.high]
        for value in values:
            try:
                validate(apply_overrides(spec.base, [(dim.key, value)]), path)
            except ConfigError as err:
                reasons = "; ".join(f"{k}: {r}" for k, r in err.problems)
                problems.append((f"space.params.{dim.key}", f"value {value!r} is not valid: {reasons}"))
    if spec.early_stopping and spec.early_stopping.metric == "val_robust_acc" and cfg["attack"] is None:
        problems.append(("space.search.early_stopping.metric", "val_robust_acc needs a training attack"))
    if problems:
        raise ConfigError(path, problems)
    if num_samples is not None:
        spec.num_samples = num_samples
    if max_concurrent is not None:
        spec.max_concurrent = max_concurrent
    return cfg, spec


def sweep_identity(cfg: dict, spec: SweepSpec, config_path: str) -> str:
    """Names the sweep's Tune experiment: the configuration and what defines the search. The
    budget (``num_samples``) and concurrency are left out, so ``--resume`` finds the sweep
    even when they are given differently (the resumed sweep keeps its original ones)."""
    search = {k: v for k, v in spec.to_dict().items() if k not in ("num_samples", "max_concurrent")}
    body = json.dumps({"cfg": {k: v for k, v in cfg.items() if k != "description"}, "spec": search},
                      sort_keys=True, default=str)
    return f"{Path(config_path).stem}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"


def sweep_dir_name(base: str, storage_path: str, resume: bool) -> str:
    """``<base>-<n>``: the newest existing attempt on --resume, otherwise a new one."""
    pattern = re.compile(rf"^{re.escape(base)}-(\d+)$")
    existing = sorted(int(m.group(1)) for name in (os.listdir(storage_path) if os.path.isdir(storage_path) else [])
                      if (m := pattern.match(name)))
    if resume:
        if not existing:
            raise FileNotFoundError(f"no sweep named {base}-<n> under {storage_path} to resume")
        return f"{base}-{existing[-1]}"
    return f"{base}-{(existing[-1] + 1) if existing else 1}"


def collect_trials(uri: str, experiment_id: str, sweep_run_id: str, targets: list[Target]) -> list[TrialOutcome]:
    """Every configuration of the sweep, its objective recomputed from its finished seed runs."""
    out = []
    for run in tracking.configuration_runs(uri, experiment_id, sweep_run_id):
        per_seed = tracking.finished_seed_metrics(uri, experiment_id, run.info.run_id)
        summary = aggregate_seed_metrics(list(per_seed.values()))
        metrics: dict[str, float | None] = objective_values(targets, summary)
        split: dict[str, dict] = {"validation": {}, "test": {}}
        for name, s in summary.items():
            for stat in SUMMARY_STATS:
                metrics[stat_name(name, stat)] = s[stat]
            role = metric_role(name)
            if role in split:
                split[role][name] = {**{stat: s[stat] for stat in SUMMARY_STATS}, "n": s["n"]}
        metrics["n_seeds"] = len(per_seed)
        seed_values = {m: {seed: values[m] for seed, values in sorted(per_seed.items())
                           if isinstance(values.get(m), (int, float))}
                       for _, m in objective_metrics(targets)}
        out.append(TrialOutcome(
            trial_id=run.data.tags.get("distfair.trial_id", ""), parent_run_id=run.info.run_id,
            params=json.loads(run.data.tags.get("distfair.trial_params", "{}")), status=run.info.status,
            metrics=metrics, objective=[metrics[t.name] for t in targets], **split,
            objective_test={t.name: _on_test(t).value(summary) if matching_test_metric(t.metric) else None
                            for t in targets}, seed_values=seed_values,
            failure=run.data.tags.get(tracking.TAG_FAILURE_REASON, "")))
    return out


def objective_metrics(targets: list[Target]) -> list[tuple[str, str]]:
    """``(family, metric)`` of every objective metric (validation), then of the test metric
    matching each (``val_worst_class_acc`` → ``worst_class_acc``: reported, never used to
    choose), in target order without repeats."""
    val = [("validation", t.metric) for t in targets]
    test = [("test", matching_test_metric(t.metric)) for t in targets if matching_test_metric(t.metric)]
    return list(dict.fromkeys(val + test))


def spread_columns(targets: list[Target]) -> list[tuple[str, str, str, str]]:
    """``(column, family, metric, stat)`` of the spread columns of ``trials.csv``: mean, std,
    n and the 95% t-interval of each objective metric on validation
    (``val_worst_class_acc_mean``, ...) and of its test counterpart, labelled
    ``test:worst_class_acc_mean``, ..."""
    return [(("test:" if family == "test" else "") + stat_name(metric, stat), family, metric, stat)
            for family, metric in objective_metrics(targets) for stat in SPREAD_STATS]


def spread_text(trial: TrialOutcome, family: str, metric: str) -> str:
    """``0.6850 ± 0.0200 (n=2) 95% CI [0.5053, 0.8647]`` (a dash for what is undefined)."""
    s = trial.spread(family, metric)
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"{fmt(s['mean'])} ± {fmt(s['std'])} (n={s['n']}) 95% CI "
            + (f"[{fmt(s['ci95_low'])}, {fmt(s['ci95_high'])}]" if s["ci95_low"] is not None else "—"))


def _on_test(target: Target) -> Target:
    """The same statistic of the test metric that matches the target's validation metric."""
    return Target(matching_test_metric(target.metric), target.stat, target.mode, target.k)


def best_metrics(best: TrialOutcome, targets: list[Target]) -> dict[str, float | None]:
    """The chosen configuration as MLflow metrics of the sweep run, in three families kept
    apart: ``best.objective.<target>`` (what it was chosen on), ``best.validation.<metric>_<stat>``
    and ``best.test.<metric>_<stat>`` (its test-set numbers: reported, never used to choose),
    named as the configuration runs name their statistics. A validation metric keeps its
    ``val_`` name, so ``best.validation.val_worst_class_acc_mean`` sits beside
    ``best.test.worst_class_acc_mean``."""
    out: dict[str, float | None] = {f"best.objective.{t.name}": v for t, v in zip(targets, best.objective)}
    for family, summaries in (("validation", best.validation), ("test", best.test)):
        for name, stats in summaries.items():
            out.update({f"best.{family}.{stat_name(name, stat)}": stats.get(stat) for stat in SUMMARY_STATS})
    out["best.n_seeds"] = best.metrics.get("n_seeds")
    return out


def objective_on_test(target: Target, trial: TrialOutcome) -> float | None:
    """The target's statistic of the matching test metric (``val_robust_acc`` → ``robust_acc``),
    to show beside the validation value it was chosen on; None where there is none."""
    return trial.objective_test.get(target.name)


def choose(trials: list[TrialOutcome], targets: list[Target]) -> tuple[TrialOutcome | None, list[TrialOutcome]]:
    """(best, Pareto set) among the finished configurations whose objective is defined. With
    one target the Pareto set is the best alone; with several, the best is the Pareto member
    that is best under the first target."""
    scored = [t for t in trials if t.status == "FINISHED" and all(v is not None for v in t.objective)]
    if not scored:
        return None, []
    modes = [t.mode for t in targets]
    front = [scored[i] for i in pareto_front([t.objective for t in scored], modes)]
    sign = 1.0 if modes[0] == "max" else -1.0
    best = max(front, key=lambda t: sign * t.objective[0])
    return best, front if len(targets) > 1 else [best]


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


# ---------------------------------------------- what a Tune trial does with its MLflow record
# Handed to the Ray layer in the trial context (``distfair.distributed.sweep``), which never
# imports MLflow nor this module: module-level functions, so they pickle by reference.
def _trial_lookup(context: dict, trial_id: str) -> dict[str, str]:
    """The tags that find a trial's configuration run again (also after a resume)."""
    return {"distfair.sweep_run": context["sweep_run_id"], "distfair.trial_id": trial_id}


def run_trial_configuration(cfg: dict, params: dict, trial_id: str, context: dict,
                            log: Callable[[str], None]) -> RunReport:
    """One trial's configuration over its seeds, recorded as a configuration run under the
    sweep run (``distfair run``'s parent, tagged with the trial id and its parameters)."""
    from distfair.distributed.sweep import short_value

    return run_configuration_with_tracking(
        cfg, config_path=context["config_path"], experiment=context["experiment"],
        tracking_uri=context["tracking_uri"], storage_path=context["storage_path"], log=log,
        lookup=_trial_lookup(context, trial_id),
        extra_tags={tracking.TAG_PARENT: context["sweep_run_id"],
                    "distfair.trial_params": json.dumps(params, default=str)},
        parent_run_name=f"{trial_id} " + " ".join(f"{k}={short_value(v)}" for k, v in params.items()))


def trial_record(context: dict, trial_id: str, curve: str | None):
    """None before the trial's configuration run exists; else ``(per-seed final metrics of its
    finished seed runs, per-seed epoch curves of ``curve`` or None)``."""
    uri, exp = context["tracking_uri"], context["experiment_id"]
    found = tracking.find_runs(uri, exp, _trial_lookup(context, trial_id))
    if not found:
        return None
    per_seed = tracking.finished_seed_metrics(uri, exp, found[0])
    return per_seed, (tracking.epoch_curves(uri, exp, found[0], curve) if curve is not None else None)


def close_trial(context: dict, trial_id: str, status: str, reason: str) -> None:
    """Close the runs a trial left open (stopped early, or its process was killed)."""
    tracking.close_trial_runs(context["tracking_uri"], context["experiment_id"], context["sweep_run_id"],
                              trial_id, status, reason)


def close_interrupted_sweep(report: SweepReport, tracking_uri: str) -> None:
    """Mark every still-open run of an interrupted sweep KILLED: seed runs, configuration
    runs, then the sweep run. Idempotent: the command calls it again after Ray has shut
    down, when no worker is left to reopen a run it had just started."""
    for run in tracking.configuration_runs(tracking_uri, report.experiment_id, report.sweep_run_id):
        seeds = tracking.seed_run_states(tracking_uri, report.experiment_id, run.info.run_id)
        tracking.mark_runs(tracking_uri, [r for r, _ in seeds.values()] + [run.info.run_id], "KILLED")
    tracking.mark_runs(tracking_uri, [report.sweep_run_id], "KILLED")


def retire_orphan_configurations(uri: str, experiment_id: str, sweep_run_id: str,
                                  log: Callable[[str], None]) -> list[str]:
    """After a resumed sweep's Tune run has completed, retire the configuration runs still
    open: a trial the killed driver had started after Tune's last snapshot of the experiment.
    Tune restored the experiment without it (and the searcher from before it was suggested,
    so its configuration was never told to Optuna and a new one was sampled in its place);
    its records are marked KILLED and deleted like any unfinished run that is redone
    (``tracking.retire_run``), so the sweep is complete. Returns the retired run ids."""
    retired = []
    for run in tracking.configuration_runs(uri, experiment_id, sweep_run_id):
        if run.info.status not in ("RUNNING", "SCHEDULED"):
            continue
        for seed_run, _ in tracking.seed_run_states(uri, experiment_id, run.info.run_id).values():
            tracking.retire_run(uri, seed_run)
        tracking.retire_run(uri, run.info.run_id)
        retired.append(run.info.run_id)
        log(f"configuration run {run.info.run_id} (trial {run.data.tags.get('distfair.trial_id', '?')}) was left "
            "open by the interrupted attempt after Tune's last snapshot; Tune has no record of it and sampled "
            "a configuration in its place: retired (KILLED, deleted)")
    return retired


def run_sweep(cfg: dict, spec: SweepSpec, *, name: str, config_path: str, experiment: str, tracking_uri: str,
              storage_path: str, resume: bool, cluster: dict[str, float], log: Callable[[str], None],
              poll_s: float = 3.0) -> SweepReport:
    """Run (or resume) the sweep ``name`` (see :func:`sweep_dir_name`) on the connected Ray
    cluster and record it in MLflow."""
    from distfair.distributed import concurrent_groups
    from distfair.distributed.sweep import TRIAL_RESOURCE, groups_and_concurrency, run_tune

    experiment_id = tracking.prepare_experiment(tracking_uri, experiment)
    Path(storage_path).mkdir(parents=True, exist_ok=True)
    usable = dict(cluster)
    if cluster.get(TRIAL_RESOURCE):
        trial_resources = {TRIAL_RESOURCE: 1}
    else:
        # A cluster that does not declare the trial resource: each trial driver takes 1% of a
        # CPU, reserved up front for as many drivers as could run, so that the seed groups of
        # every running configuration always fit (a group that cannot be placed waits forever).
        trial_resources = {"CPU": 0.01}
        most = spec.max_concurrent or concurrent_groups(cfg["scaling"], cluster)
        usable["CPU"] = cluster.get("CPU", 0.0) - 0.01 * most
    capacity = concurrent_groups(cfg["scaling"], usable)
    groups, concurrent = groups_and_concurrency(len(cfg["seeds"]), capacity, spec.max_concurrent)
    sweep_run = tracking.start_sweep_run(
        tracking_uri, experiment_id, name=name, lookup={"distfair.sweep_name": name},
        params={"sweep_file": config_path, "selected_on": "validation", "sampler": spec.sampler, "sampler_seed": spec.seed,
                "num_samples": spec.num_samples, "num_seeds": len(cfg["seeds"]), "seeds": cfg["seeds"],
                "objective": [t.__dict__ for t in spec.objective], "grid_points": len(spec.grid_points()),
                "early_stopping": spec.early_stopping.__dict__ if spec.early_stopping else None,
                "max_concurrent": concurrent, "groups_per_configuration": groups})
    log(f"sweep {name}: {spec.total_trials()} configuration(s) x {len(cfg['seeds'])} seed(s), sampler "
        f"{spec.sampler} (seed {spec.seed}), {concurrent} configuration(s) at once, {groups} worker group(s) each; "
        f"MLflow sweep run {sweep_run}")
    context = {"base": copy.deepcopy(spec.base), "config_path": config_path, "experiment": experiment, "experiment_id": experiment_id,
               "tracking_uri": tracking_uri, "storage_path": storage_path, "sweep_run_id": sweep_run,
               "seeds": list(cfg["seeds"]), "groups_per_trial": groups, "poll_s": poll_s,
               "objective": [t.__dict__ for t in spec.objective], "epochs": cfg["train"]["epochs"],
               "early_stopping": spec.early_stopping.__dict__ if spec.early_stopping else None,
               "run_trial": run_trial_configuration, "trial_record": trial_record, "close_trial": close_trial}
    interrupted = False
    try:
        run_tune(spec, context, name=name, storage_path=storage_path, resume=resume, max_concurrent=concurrent,
                 trial_resources=trial_resources, log=log)
    except KeyboardInterrupt:
        interrupted = True
    if resume and not interrupted:
        retire_orphan_configurations(tracking_uri, experiment_id, sweep_run, log)
    report = SweepReport(experiment=experiment, sweep_run_id=sweep_run, spec=spec, experiment_id=experiment_id)
    report.trials = collect_trials(tracking_uri, experiment_id, sweep_run, spec.objective)
    report.interrupted = interrupted or len(report.trials) < spec.total_trials() or any(
        t.status in ("RUNNING", "SCHEDULED") for t in report.trials)
    if report.interrupted:
        close_interrupted_sweep(report, tracking_uri)
        return report
    report.best, report.pareto = choose(report.trials, spec.objective)
    with tempfile.TemporaryDirectory() as tmp:
        files = sweep_artifacts(report, spec.objective, Path(tmp))
        metrics = {"n_configurations": len(report.trials),
                   "n_failed": sum(t.status != "FINISHED" for t in report.trials),
                   **(best_metrics(report.best, spec.objective) if report.best else {})}
        tracking.log_sweep_outcome(tracking_uri, sweep_run, best=report.best.params if report.best else None,
                                   metrics=metrics, artifacts=list(files.values()), status="FINISHED")
    return report
