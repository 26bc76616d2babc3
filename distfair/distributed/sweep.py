"""Ray Tune + Optuna: one Tune trial per configuration, each running its seeds on Ray Train.

* The searcher is Optuna (seeded sampler) wrapped in :class:`CrossedSearch`, which crosses
  every sampled point with the grid dimensions and only ever tells Optuna the *final*,
  seed-aggregated objective (never a partial result; an early-stopped configuration is told
  as PRUNED). Multi-objective searches pass a list of metrics to ``OptunaSearch`` and never
  set ``TuneConfig(metric=...)``, which would silently make them single-objective (ray.md).
* A trial (:func:`sweep_trial`) is a Tune function trainable acting as the Ray Train driver:
  it runs its configuration in a thread and, while the seeds train, reports progress read
  back from the record: seeds done, the objective so far and, with early stopping, the mean
  across seeds of a per-epoch metric for ASHA.
* :class:`SweepCallback` prints one progress line per configuration in the driver and closes
  the records of trials that ended without closing them (stopped by ASHA, or killed).

Imports run one way: this module never imports MLflow (``distfair.tracking``) nor the layers
above it (``distfair.experiment.run``, ``distfair.experiment.sweep``). What touches the record arrives as plain
module-level functions in the trial ``context`` (they pickle by reference for Ray), set by
``distfair.experiment.sweep.run_sweep``:

- ``context["run_trial"](cfg, params, trial_id, context, log)`` trains the configuration
  with its record and returns a report with ``seeds``, ``metrics`` (summaries over the
  finished seeds), ``errors`` and ``parent_run_id``;
- ``context["trial_record"](context, trial_id, curve)`` returns ``None`` before the
  configuration's record exists, else ``(per-seed final metrics, per-seed epoch curves of
  the metric curve or None)``;
- ``context["close_trial"](context, trial_id, status, reason)`` closes the trial's open runs.
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

from distfair.config.space import SweepSpec, Target, objective_values, optuna_distribution

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

    # Tune pickles the searcher (with the Tuner's state, and in every experiment snapshot).
    # Optuna's samplers may hold thread locks (NSGAIISampler does since Optuna 5.1), which no
    # pickler takes: the state goes through :func:`dumps_lock_safe`, where a lock is recreated
    # on load, never pickled, whatever Optuna keeps.
    def __reduce__(self):
        return _crossed_search_from_state, (dumps_lock_safe(self.__dict__),)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            f.write(dumps_lock_safe(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


_LOCK_TYPES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def dumps_lock_safe(obj) -> bytes:
    """``obj`` pickled (by cloudpickle, as Ray pickles it), with every ``threading.Lock`` and
    ``RLock`` inside it pickled as a new, unlocked lock of the same kind."""
    import io

    from ray import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        def reducer_override(self, o):
            new = _LOCK_TYPES.get(type(o))
            return (new, ()) if new is not None else super().reducer_override(o)

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _crossed_search_from_state(blob: bytes) -> "CrossedSearch":
    searcher = CrossedSearch.__new__(CrossedSearch)
    searcher.__dict__.update(pickle.loads(blob))
    return searcher


def build_searcher(spec: SweepSpec) -> CrossedSearch:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    names = [t.name for t in spec.objective]
    modes = [t.mode for t in spec.objective]
    inner = None
    if spec.sampler != "grid":
        sampler = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                   "random": optuna.samplers.RandomSampler}[spec.sampler](seed=spec.seed)
        space = {d.key: optuna_distribution(d) for d in spec.dims}
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


def _progress(context: dict, trial_id: str, targets: list[Target], es) -> dict | None:
    """What the record says about this trial so far (None before its configuration run exists)."""
    from distfair.metrics import aggregate_seed_metrics

    record = context["trial_record"](context, trial_id, es["metric"] if es is not None else None)
    if record is None:
        return None
    per_seed, curves = record
    out = {"seeds_done": len(per_seed), "seeds_total": len(context["seeds"]), "final": 0}
    if per_seed:
        out.update({f"so_far.{k}": v for k, v in objective_values(targets, aggregate_seed_metrics(
            list(per_seed.values()))).items() if v is not None})
    if es is not None and curves is not None:
        if len(curves) == len(context["seeds"]) and all(curves.values()):
            epochs = set.intersection(*(set(c) for c in curves.values()))
            if epochs:
                last = max(epochs)
                out["epoch"] = last + 1
                out[f"{es['metric']}.seed_mean"] = sum(c[last] for c in curves.values()) / len(curves)
    return out


class SeedsFailed(RuntimeError):
    """A configuration of which a seed failed (e.g. diverged: ``loss is nan at epoch e, batch
    b``): its trial ends in ERROR, so the searcher records it as failed and the sweep goes on."""

    def __init__(self, errors: dict):
        self.errors = {int(k): str(v) for k, v in errors.items()}
        super().__init__(failure_text(self.errors))

    def __reduce__(self):          # pickled by Ray into the trial's error file
        return SeedsFailed, (self.errors,)


def failure_text(errors: dict) -> str:
    """``seed 2: loss is nan at epoch 1, batch 3; seed 5: ...`` (the configuration run's
    ``distfair.failure_reason`` tag says the same)."""
    return "; ".join(f"seed {s}: {why}" for s, why in sorted(errors.items()))


def _failure_of(trial) -> str | None:
    """The :class:`SeedsFailed` text of an errored trial, or None (another error, or none saved)."""
    from ray import cloudpickle

    try:
        # Tune writes the pickled error in the trial's local folder first; get_pickled_error
        # reads the storage copy, which is not synced yet when on_trial_error runs
        local = trial.pickled_error_file
        if local and os.path.exists(local):
            with open(local, "rb") as f:
                err = cloudpickle.load(f)
        else:
            err = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - a missing or unreadable error file: say nothing
        return None
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, SeedsFailed):
            return failure_text(err.errors)
        err, seen = getattr(err, "cause", None) or err.__cause__, seen + 1
    return None


def sweep_trial(params: dict, context: dict) -> None:
    """One Tune trial = one configuration over all its seeds (a Ray Train driver), run by
    ``context["run_trial"]`` (see the module docstring)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    targets = [Target(**t) for t in context["objective"]]
    cfg = _trial_config(context, params)
    box: dict = {}

    def work() -> None:
        try:
            box["report"] = context["run_trial"](cfg, params, trial_id, context,
                                                 lambda msg: print(f"[distfair {trial_id}] {msg}", flush=True))
        except BaseException as err:  # noqa: BLE001 - re-raised in the trial thread below
            box["error"] = err

    worker = threading.Thread(target=work, name="distfair-configuration", daemon=True)
    worker.start()
    last: dict = {}
    while worker.is_alive():
        worker.join(timeout=context["poll_s"])
        progress = _progress(context, trial_id, targets, context["early_stopping"])
        if progress and progress != last and worker.is_alive():
            tune.report(progress)
            last = progress
    if "error" in box:
        raise box["error"]
    report = box["report"]
    if report.errors:
        # its statistics over the surviving seeds would be biased towards them (a diverged seed
        # is not a random loss): the trial errors, so the searcher is told FAIL, never a value
        raise SeedsFailed(report.errors)
    final = {"final": 1, "seeds_done": len(report.seeds), "seeds_total": len(context["seeds"]),
             "parent_run_id": report.parent_run_id}
    final.update({k: v for k, v in objective_values(targets, report.metrics).items() if v is not None})
    tune.report(final)


def short_value(value) -> str:
    """A parameter value as trial names and progress lines show it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the driver
class SweepProgress:
    """Configurations done out of the total, the time left at the rate so far, and the best
    objective value so far (each objective on its own), in the driver. On a terminal a live
    ``tqdm`` bar (``log.stream``, when the caller's ``log`` has one) with the other lines
    printed above it; elsewhere (a file, a pipe) one plain line per finished configuration.
    A resumed sweep counts the configurations it had finished, and its rate only the new ones."""

    def __init__(self, total: int, targets: list[Target], log: Callable[[str], None]):
        self.total, self.targets, self.log = total, targets, log
        self.done = self.initial = self.failed = 0
        self.best: dict[str, tuple[float, str]] = {}
        self.start: float | None = None
        self.finished: set[str] = set()
        stream = getattr(log, "stream", None)
        self.live = stream if stream is not None and _isatty(stream) else None
        self.bar = None

    def begin(self, trials) -> None:
        """First step of the experiment: what a resumed sweep had already finished."""
        import time

        if self.start is not None:
            if self.bar is not None and time.monotonic() - self._drawn >= 1.0:
                self.bar.refresh()       # once a second: keeps the elapsed time and ETA moving
                self._drawn = time.monotonic()
            return
        self.start = self._drawn = time.monotonic()
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self._count(trial, failed=trial.status == "ERROR")
        self.initial = self.done
        if self.live is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc="[distfair] configurations", unit="cfg",
                            file=self.live, smoothing=0, leave=True)
            self.bar.set_postfix_str(self._best_text(), refresh=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"[distfair] {line}", file=self.live)
        else:
            self.log(line)

    def finish(self, trial, *, failed: bool) -> None:
        if trial.trial_id in self.finished:
            return
        self.begin([])
        self._count(trial, failed=failed)
        if self.bar is not None:
            self.bar.set_postfix_str(self._best_text(), refresh=False)
            self.bar.update(1)
        else:
            self.log(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _count(self, trial, *, failed: bool) -> None:
        self.finished.add(trial.trial_id)
        self.done += 1
        self.failed += failed
        result = trial.last_result or {}
        if failed or result.get("final") != 1:
            return
        for target in self.targets:
            value = result.get(target.name)
            if value is None:
                continue
            held = self.best.get(target.name)
            if held is None or (value > held[0] if target.mode == "max" else value < held[0]):
                self.best[target.name] = (float(value), trial.trial_id)

    def _best_text(self) -> str:
        return ", ".join(f"best {name}={short_value(value)} ({trial_id})"
                         for name, (value, trial_id) in self.best.items()) or "best: none yet"

    def eta_s(self) -> float | None:
        """Seconds left at this session's mean rate (None before a configuration finished)."""
        import time

        new = self.done - self.initial
        if self.start is None or new <= 0:
            return None
        return (time.monotonic() - self.start) / new * (self.total - self.done)

    def line(self) -> str:
        from tqdm import tqdm

        eta = self.eta_s()
        return (f"configurations {self.done}/{self.total} done" + (f" ({self.failed} failed)" if self.failed else "")
                + f" | ETA {tqdm.format_interval(eta) if eta is not None else '?'} | {self._best_text()}")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class SweepCallback(Callback):
    """Progress in the driver (:class:`SweepProgress`), and records closed for trials that did
    not close them."""

    def __init__(self, context: dict, log: Callable[[str], None], total: int | None = None):
        self.context, self.log = context, log
        targets = [Target(**t) for t in context["objective"]]
        self.names = [t.name for t in targets]
        self.progress = SweepProgress(total or 0, targets, log)
        self._shown: dict[str, str] = {}

    def __getstate__(self) -> dict:
        # Tune pickles its run config, callbacks included, into the experiment folder; the
        # terminal stays out of it (a resumed sweep gets fresh callbacks, see run_tune)
        return {**self.__dict__, "log": None, "progress": None}

    def _line(self, trial, result: dict) -> str:
        params = " ".join(f"{k}={short_value(v)}" for k, v in trial.config.items())
        done = f"seeds {result.get('seeds_done', 0)}/{result.get('seeds_total', len(self.context['seeds']))}"
        prefix = "" if result.get("final") == 1 else "so_far."
        objective = ", ".join(f"{n}={short_value(result[prefix + n])}" for n in self.names if prefix + n in result)
        return f"{trial.trial_id} {params} | {done}" + (f" | {objective}" if objective else "")

    def on_step_begin(self, iteration, trials, **info):
        self.progress.begin(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        line = self._line(trial, result)
        if self._shown.get(trial.trial_id) != line:      # the final result often repeats the last progress
            self._shown[trial.trial_id] = line
            self.progress.write(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("final") != 1:
            self.progress.write(f"{trial.trial_id} stopped early")
        self._close(trial.trial_id, "KILLED", "stopped early by the scheduler")
        self.progress.finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = _failure_of(trial)
        self.progress.write(f"{trial.trial_id} failed: {reason}" if reason else
                            f"{trial.trial_id} failed: see the trial's error file under {trial.storage.trial_fs_path}")
        self._close(trial.trial_id, "FAILED", "the trial raised an error")
        self.progress.finish(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        self.progress.close()

    def _close(self, trial_id: str, status: str, reason: str) -> None:
        self.context["close_trial"](self.context, trial_id, status, reason)


def run_tune(spec: SweepSpec, context: dict, *, name: str, storage_path: str, resume: bool,
             max_concurrent: int, trial_resources: dict, log: Callable[[str], None]) -> None:
    """Run (or resume) the Tune experiment ``storage_path/name``; results land in MLflow."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # Progress results carry no objective yet (CrossedSearch only acts on final ones).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, context=context), trial_resources)
    path = str(Path(storage_path) / name)
    callbacks = [SweepCallback(context, log, total=spec.total_trials())]
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
            # A trial driver's process is kept for the next configuration (no new actor, no
            # second import of torch, MLflow and distfair: seconds per configuration, see
            # README "How it runs on Ray"). Not with early stopping: a stopped trial's
            # configuration thread is still winding down when its actor would be reused.
            tune_config=tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler,
                                        num_samples=spec.total_trials(), max_concurrent_trials=max_concurrent,
                                        reuse_actors=es is None),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    try:
        tuner.fit()
    finally:
        callbacks[0].progress.close()       # also on Ctrl-C: the bar must not stay half drawn


def groups_and_concurrency(n_seeds: int, capacity: int, requested: int | None) -> tuple[int, int]:
    """(worker groups per configuration, configurations at once) so that everything running
    fits in the cluster at the same time: ``groups × configurations <= capacity``."""
    if requested:
        concurrent = max(1, min(requested, capacity))
    else:
        concurrent = max(1, capacity // min(n_seeds, capacity))
    groups = max(1, min(n_seeds, capacity // concurrent))
    return groups, concurrent

