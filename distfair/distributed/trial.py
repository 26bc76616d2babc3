"""One sweep trial (:func:`sweep_trial`): a Tune function trainable acting as the Ray Train
driver of one configuration. It runs its configuration in a thread and, while the seeds
train, reports progress read back from the record: seeds done, the objective so far and,
with early stopping, the mean across seeds of a per-epoch metric for ASHA. A configuration
with a failed seed ends in :class:`SeedsFailed`. What touches the record arrives in the
trial ``context`` (see :mod:`distfair.distributed.sweep`)."""
from __future__ import annotations

import json
import os
import threading

from distfair.config.space import Target, objective_values


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

