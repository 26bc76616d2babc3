"""Ray Tune + Optuna: one Tune trial per configuration, each running its seeds on Ray Train.

* The searcher is Optuna (seeded sampler) wrapped in :class:`CrossedSearch`, which crosses
  every sampled point with the grid dimensions and only ever tells Optuna the *final*,
  seed-aggregated objective (never a partial result; an early-stopped configuration is told
  as PRUNED). Multi-objective searches pass a list of metrics to ``OptunaSearch`` and never
  set ``TuneConfig(metric=...)``, which would silently make them single-objective (ray.md).
* A trial (:func:`sweep_trial`) is a Tune function trainable acting as the Ray Train driver:
  it runs the foundation's ``run_configuration_with_tracking`` in a thread and, while the
  seeds train, reports progress read back from MLflow: seeds done, the objective so far and,
  with early stopping, the mean across seeds of a per-epoch metric for ASHA.
* :class:`SweepCallback` prints one progress line per configuration in the driver and closes
  the MLflow runs of trials that ended without closing them (stopped by ASHA, or killed).
"""
from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path
from typing import Callable

from ray.tune import Callback
from ray.tune.search import Searcher

from distfair import tracking
from distfair.search_space import SweepSpec, Target

TRIAL_RESOURCE = "distfair_trial"        # custom resource a local instance declares for trial drivers


class CrossedSearch(Searcher):
    """Sampled points (from ``inner``, an OptunaSearch, or a single empty point for a grid-only
    search) crossed with ``grid`` points; Optuna sees one trial per sampled point whose value
    is the mean over its grid points of the final objective values (of the grid trials that
    finished; if none did, the point is FAIL when one errored and PRUNED otherwise)."""

    def __init__(self, inner: Searcher | None, grid: list[dict], names: list[str], modes: list[str],
                 max_points: int):
        super().__init__(metric=names if len(names) > 1 else names[0], mode=modes if len(modes) > 1 else modes[0])
        self._inner, self._grid, self._names, self._max_points = inner, grid, names, max_points
        self._queue: list[tuple[str, int]] = []
        self._points: dict[str, dict] = {}
        self._trial_point: dict[str, tuple[str, int]] = {}
        self._n_points = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True       # the objective is fixed by the sweep file, not by TuneConfig

    def suggest(self, trial_id: str):
        if not self._queue:
            if self._n_points >= self._max_points:
                return Searcher.FINISHED
            point_id = f"point{self._n_points}"
            params = {} if self._inner is None else self._inner.suggest(point_id)
            if params is None or params == Searcher.FINISHED:
                return params
            self._n_points += 1
            self._points[point_id] = {"params": params, "pending": set(range(len(self._grid))), "values": {}}
            self._queue = [(point_id, i) for i in range(len(self._grid))]
        point_id, index = self._queue.pop(0)
        self._trial_point[trial_id] = (point_id, index)
        return {**self._points[point_id]["params"], **self._grid[index]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Progress results never reach Optuna: it only learns seed-aggregated final values."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._trial_point:
            return
        point_id, index = self._trial_point.pop(trial_id)
        point = self._points[point_id]
        final = bool(result) and result.get("final") == 1 and all(result.get(n) is not None for n in self._names)
        point["values"][index] = [float(result[n]) for n in self._names] if final else None
        point.setdefault("errors", set()).update({index} if error else set())
        point["pending"].discard(index)
        if point["pending"] or self._inner is None:
            return
        values = [v for v in point["values"].values() if v is not None]
        if values:
            mean = {n: sum(v[i] for v in values) / len(values) for i, n in enumerate(self._names)}
            self._inner.on_trial_complete(point_id, {**mean, "final": 1})
        else:   # nothing finished: FAIL if any grid trial errored, else PRUNED (stopped early)
            self._inner.on_trial_complete(point_id, None, error=bool(point["errors"]))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def build_searcher(spec: SweepSpec) -> CrossedSearch:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    names = [t.name for t in spec.objective]
    modes = [t.mode for t in spec.objective]
    inner = None
    if spec.sampler != "grid":
        sampler = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                   "random": optuna.samplers.RandomSampler}[spec.sampler](seed=spec.seed)
        space = {}
        for d in spec.dims:
            if d.type == "float":
                space[d.key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log, step=d.step)
            elif d.type == "int":
                space[d.key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log,
                                                                    step=int(d.step or 1))
            else:
                space[d.key] = optuna.distributions.CategoricalDistribution(list(d.choices))
        inner = OptunaSearch(space=space, metric=names if len(names) > 1 else names[0],
                             mode=modes if len(modes) > 1 else modes[0], sampler=sampler)
    max_points = 1 if spec.sampler == "grid" else spec.num_samples
    return CrossedSearch(inner, spec.grid_points(), names, modes, max_points)


# ------------------------------------------------------------------------------ the trial
def _trial_config(context: dict, params: dict) -> dict:
    from distfair.config import apply_overrides, validate

    cfg = validate(apply_overrides(context["base"], list(params.items())),
                   f"{context['config_path']} (trial {json.dumps(params, default=str)})")
    cfg["scaling"]["max_concurrent_seeds"] = context["groups_per_trial"]
    return cfg


def objective_values(targets: list[Target], summary: dict) -> dict[str, float | None]:
    return {t.name: t.value(summary) for t in targets}


def _progress(context: dict, lookup: dict, targets: list[Target], es) -> dict | None:
    """What MLflow says about this trial so far (None before its configuration run exists)."""
    from distfair.metrics import aggregate_seed_metrics

    uri, exp = context["tracking_uri"], context["experiment_id"]
    found = tracking.find_runs(uri, exp, lookup)
    if not found:
        return None
    per_seed = tracking.finished_seed_metrics(uri, exp, found[0])
    out = {"seeds_done": len(per_seed), "seeds_total": len(context["seeds"]), "final": 0}
    if per_seed:
        out.update({f"so_far.{k}": v for k, v in objective_values(targets, aggregate_seed_metrics(
            list(per_seed.values()))).items() if v is not None})
    if es is not None:
        curves = tracking.epoch_curves(uri, exp, found[0], es["metric"])
        if len(curves) == len(context["seeds"]) and all(curves.values()):
            epochs = set.intersection(*(set(c) for c in curves.values()))
            if epochs:
                last = max(epochs)
                out["epoch"] = last + 1
                out[f"{es['metric']}.seed_mean"] = sum(c[last] for c in curves.values()) / len(curves)
    return out


def sweep_trial(params: dict, context: dict) -> None:
    """One Tune trial = one configuration over all its seeds (a Ray Train driver)."""
    from ray import tune

    from distfair.run import run_configuration_with_tracking
    from distfair.search_space import Target

    trial_id = tune.get_context().get_trial_id()
    targets = [Target(**t) for t in context["objective"]]
    cfg = _trial_config(context, params)
    lookup = {"distfair.sweep_run": context["sweep_run_id"], "distfair.trial_id": trial_id}
    box: dict = {}

    def work() -> None:
        try:
            box["report"] = run_configuration_with_tracking(
                cfg, config_path=context["config_path"], experiment=context["experiment"],
                tracking_uri=context["tracking_uri"], storage_path=context["storage_path"],
                log=lambda msg: print(f"[distfair {trial_id}] {msg}", flush=True), lookup=lookup,
                extra_tags={tracking.TAG_PARENT: context["sweep_run_id"],
                            "distfair.trial_params": json.dumps(params, default=str)},
                parent_run_name=f"{trial_id} " + " ".join(f"{k}={_short(v)}" for k, v in params.items()))
        except BaseException as err:  # noqa: BLE001 - re-raised in the trial thread below
            box["error"] = err

    worker = threading.Thread(target=work, name="distfair-configuration", daemon=True)
    worker.start()
    last: dict = {}
    while worker.is_alive():
        worker.join(timeout=context["poll_s"])
        progress = _progress(context, lookup, targets, context["early_stopping"])
        if progress and progress != last and worker.is_alive():
            tune.report(progress)
            last = progress
    if "error" in box:
        raise box["error"]
    report = box["report"]
    if not report.seeds:
        raise RuntimeError(f"no seed of this configuration finished: {report.errors}")
    final = {"final": 1, "seeds_done": len(report.seeds), "seeds_total": len(context["seeds"]),
             "parent_run_id": report.parent_run_id}
    final.update({k: v for k, v in objective_values(targets, report.metrics).items() if v is not None})
    tune.report(final)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the driver
class SweepCallback(Callback):
    """Progress lines in the driver, and MLflow runs closed for trials that did not close them."""

    def __init__(self, context: dict, log: Callable[[str], None]):
        self.context, self.log = context, log
        self.names = [Target(**t).name for t in context["objective"]]

    def _line(self, trial, result: dict) -> str:
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        done = f"seeds {result.get('seeds_done', 0)}/{result.get('seeds_total', len(self.context['seeds']))}"
        prefix = "" if result.get("final") == 1 else "so_far."
        objective = ", ".join(f"{n}={_short(result[prefix + n])}" for n in self.names if prefix + n in result)
        return f"{trial.trial_id} {params} | {done}" + (f" | {objective}" if objective else "")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.log(self._line(trial, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("final") != 1:
            self.log(f"{trial.trial_id} stopped early")
        self._close(trial.trial_id, "KILLED", "stopped early by the scheduler")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"{trial.trial_id} failed: see the trial's error file under {trial.storage.trial_fs_path}")
        self._close(trial.trial_id, "FAILED", "the trial raised an error")

    def _close(self, trial_id: str, status: str, reason: str) -> None:
        tracking.close_trial_runs(self.context["tracking_uri"], self.context["experiment_id"],
                                  self.context["sweep_run_id"], trial_id, status, reason)


def run_tune(spec: SweepSpec, context: dict, *, name: str, storage_path: str, resume: bool,
             max_concurrent: int, trial_resources: dict, log: Callable[[str], None]) -> None:
    """Run (or resume) the Tune experiment ``storage_path/name``; results land in MLflow."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # Progress results carry no objective yet (CrossedSearch only acts on final ones).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, context=context), trial_resources)
    path = str(Path(storage_path) / name)
    callbacks = [SweepCallback(context, log)]
    if resume and tune.Tuner.can_restore(path):
        log(f"resuming the Tune experiment at {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        tuner._local_tuner._run_config.callbacks = callbacks     # callbacks are not restored
    else:
        es = spec.early_stopping
        scheduler = FIFOScheduler() if es is None else ASHAScheduler(
            time_attr="epoch", metric=f"{es.metric}.seed_mean", mode=es.mode, grace_period=es.grace_period,
            reduction_factor=es.reduction_factor, max_t=context["epochs"])
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler,
                                        num_samples=spec.total_trials(), max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    tuner.fit()


def groups_and_concurrency(n_seeds: int, capacity: int, requested: int | None) -> tuple[int, int]:
    """(worker groups per configuration, configurations at once) so that everything running
    fits in the cluster at the same time: ``groups × configurations <= capacity``."""
    if requested:
        concurrent = max(1, min(requested, capacity))
    else:
        concurrent = max(1, capacity // min(n_seeds, capacity))
    groups = max(1, min(n_seeds, capacity // concurrent))
    return groups, concurrent

