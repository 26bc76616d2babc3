"""Everything MLflow: the only package of distfair that imports it.

Record layout of one configuration (``distfair run``):

* a **parent run** with every resolved config value as a param (``train.lr`` style), and for
  every metric its children report ``<name>_mean``, ``<name>_std`` (ddof=1), ``<name>_min``,
  ``<name>_max``, ``<name>_ci95_low``/``_high`` plus ``n_seeds``;
* one **child run per seed** (tag ``mlflow.parentRunId``), param ``seed``, per-epoch training
  curves with ``step=epoch``, the final metrics (the evaluation summaries' included),
  self-check tags ``distfair.check.*``, and artifacts: confusion matrices, per-class
  accuracies, each evaluation summary's document (subgroup reports, targeted success rates,
  self-checks, ...; JSON), per-sample robust flags (.npz), the figures under ``plots/`` (PNG)
  and the final checkpoint;
* the versioned result records of ``distfair.results.record``: ``result.json`` on each seed run,
  ``configuration_result.json`` on the parent;
* on the parent, at the end: ``plots/seed_stability.png`` (every seed, mean ± std and the 95%
  interval of the main metrics) and a Markdown summary at the top of its description (where
  the MLflow UI's run page opens);
* on both, what reproduces them: the resolved configuration as ``config.yaml`` and tags with
  the versions and the git commit (``distfair.experiment.run.environment_tags``); seed runs also carry
  the configuration's identity tags and params, so the UI filters them by configuration.

Experiments are tagged ``mlflow.experimentKind = custom_model_development`` (a model
training experiment, not a GenAI one). Nothing here reads environment variables into a run:
credentials (``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, AWS keys) stay out.

All writes are batched (``log_batch``): against a tracking server one call per value costs
~40 ms (docs/ray-notes.md, "MLflow"). Children are looked up by (parent, seed) before being created, so
a retried seed never produces a duplicate run.

The package's modules, each loaded when one of its names is first used (importing
``distfair.tracking`` or ``distfair.tracking.buffer`` imports no MLflow; ``tracking.X`` loads
the module of ``X``, see :data:`_EXPORTS`):

* ``uris``: the tracking URI of a command and the MLflow UI's links (no MLflow);
* ``tags``: the tags of the record layout (no MLflow);
* ``client``: the MLflow client retried while the tracking server is unreachable;
* ``buffer``: a seed run's writes kept while the server is unreachable (no MLflow);
* ``writes``: batched writes of metrics, params, tags and text artifacts;
* ``runs``: the run hierarchy: experiments, configuration, seed, sweep, analysis and report
  runs, found again by their tags, closed;
* ``seed_logger``: :class:`SeedRunLogger`, one seed's record written from its Ray worker;
* ``unlogged``: the writes the server never received, kept on disk and replayed by
  ``distfair relog``;
* ``summary``: a configuration run's statistics, records, figure and description;
* ``queries``: the reads of ``--resume``, ``init_from``, sweeps, ``analyze`` and ``report``;
* ``recorded``: whether runs are FINISHED with their checkpoint logged (``distfair gc``).
"""
from __future__ import annotations

import importlib
import os

# distfair downloads a few small files (result records, checkpoints) between its own progress
# lines; MLflow's per-download progress bars only clutter the command's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Outages of the tracking server are retried by distfair itself (_RetryingClient, SeedRunLogger),
# which says so in the progress output and keeps a seed's results when the server never comes
# back. MLflow's own HTTP retries (7 by default, ~4 min of silent back-off inside one call)
# would hide the outage from it; a value the user set is kept.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

#: every public name of the package -> its module (loaded, with MLflow, on first use)
_EXPORTS: dict[str, str] = {
    # uris
    "DEFAULT_DB": "uris",
    "LOCAL_UI": "uris",
    "UI_RUNS_PATH": "uris",
    "resolve_tracking_uri": "uris",
    "ui_command": "uris",
    "ui_url": "uris",
    # tags
    "EXPERIMENT_KIND": "tags",
    "REPORT_TAGS": "tags",
    "TAG_DESCRIPTION": "tags",
    "TAG_EXPERIMENT_KIND": "tags",
    "TAG_FAILURE_REASON": "tags",
    "TAG_PARENT": "tags",
    "TAG_ROLE": "tags",
    "TAG_SEED": "tags",
    "TAG_STOP_REASON": "tags",
    # client
    "set_outage_log": "client",
    "forget_open_runs": "client",
    # buffer
    "TrackingUnavailable": "buffer",
    # writes
    "MAX_BATCH": "writes",
    "MAX_PARAM_LEN": "writes",
    "MAX_TAG_LEN": "writes",
    # runs
    "close_trial_runs": "runs",
    "find_runs": "runs",
    "get_or_create_seed_run": "runs",
    "log_analysis_run": "runs",
    "log_report": "runs",
    "log_sweep_outcome": "runs",
    "mark_runs": "runs",
    "next_run_name": "runs",
    "prepare_experiment": "runs",
    "reopen_run": "runs",
    "retag_run": "runs",
    "retire_run": "runs",
    "seed_run_states": "runs",
    "start_parent_run": "runs",
    "start_sweep_run": "runs",
    # seed_logger
    "EPOCH_MARK": "seed_logger",
    "SEED_FIGURES_ENV": "seed_logger",
    "RunClosedError": "seed_logger",
    "SeedRunLogger": "seed_logger",
    "seed_figures_enabled": "seed_logger",
    "seed_logger_factory": "seed_logger",
    # unlogged
    "park_open_runs": "unlogged",
    "relog": "unlogged",
    "relog_command": "unlogged",
    "unlogged_root": "unlogged",
    # summary
    "SEED_STABILITY_FIGURE": "summary",
    "log_parent_summary": "summary",
    # queries
    "check_sweep_run": "queries",
    "configuration_params": "queries",
    "configuration_runs": "queries",
    "epoch_curves": "queries",
    "find_experiment": "queries",
    "finished_seed_metrics": "queries",
    "finished_seed_records": "queries",
    "finished_seed_runs": "queries",
    "latest_analysis_images": "queries",
    "latest_configuration_run": "queries",
    "report_configurations": "queries",
    "report_seed_runs": "queries",
    "run_json_artifact": "queries",
    "run_overview": "queries",
    "seed_checkpoints": "queries",
    "sweep_runs": "queries",
    # recorded
    "CHECKPOINT_ARTIFACT": "recorded",
    "runs_recorded": "recorded",
    "seed_items_recorded": "recorded",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """``tracking.X``: ``X`` from its module, imported on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
