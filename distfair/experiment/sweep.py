"""``distfair sweep``: search a configuration's ``space`` with Ray Tune + Optuna, every
configuration repeated over seeds and judged on the distribution of its seeds.

MLflow record: a **sweep run** (the sweep file, sampler, objective; at the end the best
configuration as ``best.*`` params and metrics, the trials table, the Optuna study and its
history plot, and for multi-objective searches the Pareto set as JSON and a plot) → one
**configuration run** per trial (``distfair run``'s parent) → one **seed run** per seed.
Everything reported at the end is recomputed from the seed runs MLflow holds.

The outcomes (trials, best, Pareto set) are in ``sweep_results``, the sweep run's files in
``sweep_artifacts``; their names stay importable from here. ``sweep_plan`` runs the command.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from distfair import tracking
from distfair.config import ConfigError, apply_overrides, flatten, parse_override, read_document, validate
from distfair.config.limits import shown
from distfair.config.space import SweepSpec, parse_space
from distfair.experiment.run import RunReport, run_configuration_with_tracking
from distfair.experiment.sweep_artifacts import history_figure, history_plot, sweep_artifacts
from distfair.experiment.sweep_results import (SPREAD_STATS, SUMMARY_STATS, SweepReport, TrialOutcome, _on_test,
                                               best_metrics, choose, collect_trials, objective_metrics,
                                               objective_on_test, spread_columns, spread_text)

__all__ = ["SPREAD_STATS", "SUMMARY_STATS", "SweepReport", "TrialOutcome", "best_metrics", "choose",
           "close_interrupted_sweep", "close_trial", "collect_trials", "history_figure", "history_plot",
           "adopt_orphan_configuration", "load_sweep", "objective_metrics", "objective_on_test", "retire_orphan_configurations", "run_sweep",
           "run_trial_configuration", "spread_columns", "spread_text", "sweep_artifacts", "sweep_dir_name",
           "sweep_identity", "trial_record", "_on_test"]


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
    if isinstance(cfg["seeds"], dict):
        raise ConfigError(path, [("seeds", "adaptive seeds ({min, max, until}) are for `distfair run`; a sweep runs "
                                           "every configuration over a seed list or count")])
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
                problems.append((f"space.params.{dim.key}", f"value {shown(value)} is not valid: {reasons}"))
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

    run_name = f"{trial_id} " + " ".join(f"{k}={short_value(v)}" for k, v in params.items())
    if context.get("resumed") is not None:
        adopt_orphan_configuration(context, trial_id, params, run_name, log)
    return run_configuration_with_tracking(
        cfg, config_path=context["config_path"], experiment=context["experiment"],
        tracking_uri=context["tracking_uri"], storage_path=context["storage_path"], log=log,
        lookup=_trial_lookup(context, trial_id),
        extra_tags={tracking.TAG_PARENT: context["sweep_run_id"], TAG_TRIAL_PARAMS: _params_text(params)},
        parent_run_name=run_name, pool=context.get("pool"), owner=trial_id)


TAG_TRIAL_PARAMS = "distfair.trial_params"
TAG_ADOPTED_FROM = "distfair.adopted_from_trial"
TAG_ADOPTED_IN = "distfair.adopted_in_attempt"


def _params_text(params: dict) -> str:
    return json.dumps(params, default=str)


def adopt_orphan_configuration(context: dict, trial_id: str, params: dict, run_name: str,
                               log: Callable[[str], None]) -> str | None:
    """In a resumed sweep, a trial that has no configuration run yet takes over an orphan with
    the same parameters: a configuration run an earlier attempt started for a trial that Tune's
    last snapshot does not hold (the killed driver started it, or even finished it, after that
    snapshot, or wrote none). The resumed searcher is restored from that same snapshot, so a
    seeded one suggests those configurations again; taken over, the run keeps its finished
    seeds and only the others are trained (none, if it had finished), instead of a second
    record of one configuration. Orphans no trial takes over are retired once the sweep is done
    (:func:`retire_orphan_configurations`). Returns the run id taken over, or None."""
    uri, exp, resumed = context["tracking_uri"], context["experiment_id"], context["resumed"]
    if tracking.find_runs(uri, exp, _trial_lookup(context, trial_id)):
        return None                                  # a trial Tune restored: it has its run
    wanted = json.loads(_params_text(params))
    for run in tracking.configuration_runs(uri, exp, context["sweep_run_id"]):
        tags = run.data.tags
        if (tags.get("distfair.trial_id") in resumed["trials"] or run.info.start_time >= resumed["started_ms"]
                or tags.get(TAG_ADOPTED_IN) == resumed["attempt"]):
            continue                                 # Tune's own, this attempt's, or taken already
        try:
            same = json.loads(tags.get(TAG_TRIAL_PARAMS, "null")) == wanted
        except ValueError:
            same = False
        if not same:
            continue
        earlier = tags.get("distfair.trial_id", "?")
        tracking.retag_run(uri, run.info.run_id, {"distfair.trial_id": trial_id, TAG_ADOPTED_FROM: earlier,
                                                  TAG_ADOPTED_IN: resumed["attempt"]}, run_name=run_name)
        log(f"configuration run {run.info.run_id} ({run.info.status}) of trial {earlier}, which the interrupted "
            f"attempt started after Tune's last snapshot, has this trial's parameters: taken over, its finished "
            "seeds kept")
        return run.info.run_id
    return None


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
                                  log: Callable[[str], None], tune_trials: set[str] | None = None) -> list[str]:
    """After a resumed sweep's Tune run has completed, retire the configuration runs of trials
    Tune has no record of: trials the killed driver started (or even finished) after Tune's
    last snapshot, which no trial of this attempt took over (:func:`adopt_orphan_configuration`;
    an unseeded searcher suggests other configurations in their place). Tune restored the
    experiment without them and the searcher from before they were suggested, so Optuna was
    never told of them; their records are marked KILLED if open and deleted like any
    unfinished run that is redone (``tracking.retire_run``), so the sweep's record holds
    exactly Tune's trials. ``tune_trials``: the ids of every trial Tune knows (None: retire the
    runs still open). Returns the retired run ids."""
    retired = []
    for run in tracking.configuration_runs(uri, experiment_id, sweep_run_id):
        trial = run.data.tags.get("distfair.trial_id", "?")
        open_run = run.info.status in ("RUNNING", "SCHEDULED")
        if (trial in tune_trials) if tune_trials is not None else not open_run:
            continue
        for seed_run, _ in tracking.seed_run_states(uri, experiment_id, run.info.run_id).values():
            tracking.retire_run(uri, seed_run)
        tracking.retire_run(uri, run.info.run_id)
        retired.append(run.info.run_id)
        log(f"configuration run {run.info.run_id} (trial {trial}, {run.info.status}) was started by the interrupted "
            "attempt after Tune's last snapshot; Tune has no record of it and sampled a configuration in its "
            "place: retired (" + ("KILLED, " if open_run else "") + "deleted)")
    return retired


def run_sweep(cfg: dict, spec: SweepSpec, *, name: str, config_path: str, experiment: str, tracking_uri: str,
              storage_path: str, resume: bool, cluster: dict[str, float], log: Callable[[str], None],
              poll_s: float = 3.0) -> SweepReport:
    """Run (or resume) the sweep ``name`` (see :func:`sweep_dir_name`) on the connected Ray
    cluster and record it in MLflow."""
    from distfair.distributed import concurrent_groups
    from distfair.distributed.slots import SlotPool, pool_ticking
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
    # one set of worker groups for the whole sweep, fed by every trial (distfair.distributed.slots);
    # not when the scaling itself is searched: then each configuration starts its own
    shared = not any(d.key.startswith("scaling.") for d in spec.dims + spec.grid)
    slots = capacity if shared else groups
    sweep_run = tracking.start_sweep_run(
        tracking_uri, experiment_id, name=name, lookup={"distfair.sweep_name": name},
        params={"sweep_file": config_path, "selected_on": "validation", "sampler": spec.sampler, "sampler_seed": spec.seed,
                "num_samples": spec.num_samples, "num_seeds": len(cfg["seeds"]), "seeds": cfg["seeds"],
                "objective": [t.__dict__ for t in spec.objective], "grid_points": len(spec.grid_points()),
                "early_stopping": spec.early_stopping.__dict__ if spec.early_stopping else None,
                "max_concurrent": concurrent, "worker_groups": slots})
    log(f"sweep {name}: {spec.total_trials()} configuration(s) x {len(cfg['seeds'])} seed(s), sampler "
        f"{spec.sampler} (seed {spec.seed}), {concurrent} configuration(s) at once, "
        + (f"{slots} worker group(s) that stay up for the sweep; " if shared else f"{groups} worker group(s) each; ")
        + f"MLflow sweep run {sweep_run}")
    context = {"base": copy.deepcopy(spec.base), "config_path": config_path, "experiment": experiment, "experiment_id": experiment_id,
               "tracking_uri": tracking_uri, "storage_path": storage_path, "sweep_run_id": sweep_run,
               "seeds": list(cfg["seeds"]), "groups_per_trial": groups, "poll_s": poll_s,
               "objective": [t.__dict__ for t in spec.objective], "epochs": cfg["train"]["epochs"],
               "early_stopping": spec.early_stopping.__dict__ if spec.early_stopping else None,
               "run_trial": run_trial_configuration, "trial_record": trial_record, "close_trial": close_trial}
    interrupted, tune_trials = False, None
    pool = SlotPool(cfg["scaling"], storage_path=storage_path, log=log, progress=False, slots=slots,
                    name=f"{name}-slots-{uuid.uuid4().hex[:6]}") if shared else None
    if pool is not None:
        context["pool"] = pool.handle
    try:
        with pool_ticking(pool):
            tune_trials = run_tune(spec, context, name=name, storage_path=storage_path, resume=resume, max_concurrent=concurrent,
                     trial_resources=trial_resources, log=log, cancel=pool.cancel_owner if pool else None)
    except KeyboardInterrupt:
        interrupted = True
    if pool is not None:
        if interrupted:
            pool.abandon()
        else:
            pool.close()
    if resume and not interrupted:
        retire_orphan_configurations(tracking_uri, experiment_id, sweep_run, log, tune_trials)
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
