"""Ray Tune + Optuna: one Tune trial per configuration, each running its seeds on Ray Train.

* The searcher is Optuna wrapped in :class:`~distfair.distributed.search.CrossedSearch`,
  which only ever tells Optuna the final, seed-aggregated objective (:mod:`distfair.distributed.search`).
* A trial (:func:`~distfair.distributed.trial.sweep_trial`) is a Tune function trainable acting as
  the Ray Train driver of one configuration (:mod:`distfair.distributed.trial`).
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

import os
from pathlib import Path
from typing import Callable

from ray.tune import Callback

from distfair.config.space import SweepSpec, Target
# re-exported: imported from here, and named in the pickles of earlier sweeps (their searcher
# state and trial error files), which a resumed sweep reads
from distfair.distributed.search import (CrossedSearch, _crossed_search_from_state, build_searcher,  # noqa: F401
                                         dumps_lock_safe)
from distfair.distributed.trial import (SeedsFailed, _failure_of, _trial_config, failure_text,  # noqa: F401
                                        short_value, sweep_trial)

TRIAL_RESOURCE = "distfair_trial"        # custom resource a local instance declares for trial drivers


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

    def __init__(self, context: dict, log: Callable[[str], None], total: int | None = None,
                 cancel: Callable[[str], None] | None = None):
        self.context, self.log, self.cancel = context, log, cancel
        targets = [Target(**t) for t in context["objective"]]
        self.names = [t.name for t in targets]
        self.progress = SweepProgress(total or 0, targets, log)
        self._shown: dict[str, str] = {}
        self.trial_ids: set[str] = set()      # every trial Tune knows in this attempt (restored ones too)

    def __getstate__(self) -> dict:
        # Tune pickles its run config, callbacks included, into the experiment folder; the
        # terminal stays out of it (a resumed sweep gets fresh callbacks, see run_tune)
        return {**self.__dict__, "log": None, "progress": None, "cancel": None,
                "context": {k: v for k, v in self.context.items() if k != "pool"}}

    def _line(self, trial, result: dict) -> str:
        params = " ".join(f"{k}={short_value(v)}" for k, v in trial.config.items())
        done = f"seeds {result.get('seeds_done', 0)}/{result.get('seeds_total', len(self.context['seeds']))}"
        prefix = "" if result.get("final") == 1 else "so_far."
        objective = ", ".join(f"{n}={short_value(result[prefix + n])}" for n in self.names if prefix + n in result)
        return f"{trial.trial_id} {params} | {done}" + (f" | {objective}" if objective else "")

    def on_step_begin(self, iteration, trials, **info):
        self.trial_ids.update(t.trial_id for t in trials)
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
        self.trial_ids.update(t.trial_id for t in trials)
        self.progress.close()

    def _close(self, trial_id: str, status: str, reason: str) -> None:
        if self.cancel is not None:          # its items left in the shared slots, before its runs close
            self.cancel(trial_id)
        self.context["close_trial"](self.context, trial_id, status, reason)


def run_tune(spec: SweepSpec, context: dict, *, name: str, storage_path: str, resume: bool,
             max_concurrent: int, trial_resources: dict, log: Callable[[str], None],
             cancel: Callable[[str], None] | None = None) -> set[str]:
    """Run (or resume) the Tune experiment ``storage_path/name``; results land in MLflow.
    ``cancel(trial_id)`` drops the queued items of a trial that ended (the shared slots').
    Returns the ids of every trial Tune knows once it is done (restored ones included).

    A resumed run hands its trials ``context["resumed"]``: ``trials``, the ids in Tune's last
    snapshot (none if the killed driver never wrote one), ``attempt`` (an id of this attempt)
    and ``started_ms``, so that a trial can take over the record of a configuration the killed
    driver had started after that snapshot (``distfair.experiment.sweep.adopt_orphan_configuration``)."""
    import time
    import uuid

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # Progress results carry no objective yet (CrossedSearch only acts on final ones).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    path = str(Path(storage_path) / name)
    restore = resume and tune.Tuner.can_restore(path)
    if resume:
        known: list[str] = []
        if restore:
            try:
                known = sorted(t.trial_id for t in tune.ExperimentAnalysis(path).trials)
            except ValueError:          # the Tuner's file, but no snapshot of the experiment yet
                restore = False
        context = {**context, "resumed": {"trials": known, "attempt": uuid.uuid4().hex[:12],
                                          "started_ms": int(time.time() * 1000)}}
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, context=context), trial_resources)
    callbacks = [SweepCallback(context, log, total=spec.total_trials(), cancel=cancel)]
    if restore:
        log(f"resuming the Tune experiment at {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        tuner._local_tuner._run_config.callbacks = callbacks     # callbacks are not restored
    else:
        if resume:
            log(f"no Tune snapshot at {path} (the driver was killed before its first): the searcher starts "
                "again; configurations it suggests again take over their earlier records")
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
    return set(callbacks[0].trial_ids)


def groups_and_concurrency(n_seeds: int, capacity: int, requested: int | None) -> tuple[int, int]:
    """(worker groups per configuration, configurations at once) so that everything running
    fits in the cluster at the same time: ``groups × configurations <= capacity``."""
    if requested:
        concurrent = max(1, min(requested, capacity))
    else:
        concurrent = max(1, capacity // min(n_seeds, capacity))
    groups = max(1, min(n_seeds, capacity // concurrent))
    return groups, concurrent

