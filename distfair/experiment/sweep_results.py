"""A sweep's configurations as outcomes: each trial's objective and seed statistics recomputed
from the seed runs MLflow holds (:func:`collect_trials`), the chosen configuration and Pareto
set (:func:`choose`), and the :class:`SweepReport` ``distfair sweep`` prints."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from distfair import tracking
from distfair.config.space import (SweepSpec, Target, chosen_index, matching_test_metric, metric_role, objective_values,
                                   stat_name)
from distfair.metrics import aggregate_seed_metrics
from distfair.results.names import SEED_STATISTICS, SPREAD_STATISTICS

#: the statistics over seeds reported per metric for every configuration: those of the MLflow
#: configuration runs (``distfair.tracking.log_parent_summary``), named the same way
#: (``<metric>_<stat>``); the 95% interval is Student's t on the seeds (``distfair.metrics.summarize``)
SUMMARY_STATS = SEED_STATISTICS
#: the spread of an objective metric (and of its test counterpart) in trials.csv and the summary
SPREAD_STATS = SPREAD_STATISTICS


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
    best, front = chosen_index([list(t.objective) for t in scored], [t.mode for t in targets])
    return scored[best], [scored[i] for i in front] if len(targets) > 1 else [scored[best]]
