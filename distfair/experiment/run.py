"""``distfair run``: one configuration over several seeds, recorded as an MLflow parent run
with one child run per seed. The layer between the command line and Ray/MLflow, reused by
the sweep (``distfair.experiment.run_plan`` runs a whole file's configurations).

What a run records about itself is in ``provenance``, its summary in ``summary``, the
checkpoints it reads in ``references``, ``--resume`` in ``resume`` and the refusals before
anything starts in ``refusals``; their names stay importable from here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

from distfair import tracking
from distfair.config import flatten
from distfair.config.seeds import planned_seeds, seed_rule
from distfair.experiment.adaptive import default_wave, run_waves, stopping_summary
from distfair.experiment.outcome import Interrupted, RunReport
from distfair.experiment.provenance import (CONFIG_ARTIFACT, SEED_IDENTITY_TAGS, VERSIONED_PACKAGES, config_hash,
                                            environment_tags, git_state, resolved_config_yaml, run_description)
from distfair.experiment.references import resolve_init_from, resolve_references
from distfair.experiment.refusals import STORAGE_PROBE_BYTES, default_storage_path, storage_problem
from distfair.experiment.resume import EarlierAttempt, find_earlier_attempt, finished_configuration_report
from distfair.experiment.summary import (MAIN_FAMILIES, MAIN_METRICS, MAX_MAIN_METRICS, SUMMARY_HEADING, main_metrics,
                                         summary_markdown)
from distfair.metrics import aggregate_seed_metrics
from distfair.results.record import configuration_record

__all__ = ["CONFIG_ARTIFACT", "EarlierAttempt", "Interrupted", "MAIN_FAMILIES", "MAIN_METRICS", "MAX_MAIN_METRICS",
           "RunReport", "SEED_IDENTITY_TAGS", "STORAGE_PROBE_BYTES", "SUMMARY_HEADING", "VERSIONED_PACKAGES",
           "config_hash", "configuration_result", "default_storage_path", "environment_tags",
           "find_earlier_attempt", "finished_configuration_report", "git_state", "main_metrics", "open_seed_runs",
           "resolve_init_from", "resolve_references", "resolved_config_yaml", "run_configuration_with_tracking",
           "run_description", "storage_problem", "summary_markdown"]


def run_configuration_with_tracking(cfg: dict, *, config_path: str, experiment: str, tracking_uri: str,
                                    storage_path: str | Path, log: Callable[[str], None],
                                    extra_tags: dict[str, str] | None = None, lookup: dict[str, str] | None = None,
                                    parent_run_name: str | None = None, ray_run_name: str | None = None,
                                    init_paths: dict[int, str] | None = None,
                                    references: dict[int, dict[str, str]] | None = None,
                                    resume_parent: str | None = None, pool=None,
                                    owner: str | None = None) -> RunReport:
    """Create (or, with ``lookup`` tags, find; with ``resume_parent``, reopen that
    configuration run: ``distfair run --resume``) the MLflow records, train every seed that has
    no FINISHED run yet on the connected Ray cluster, and aggregate.

    ``init_paths`` / ``references``: ``train.init_from`` and the defense's reference files
    resolved per seed (``resolve_init_from``, ``resolve_references``); resolved here if None.
    Ray must already be initialised (see ``distfair.distributed.ray_session``). ``pool``: the
    command's slots (``distfair.distributed.slots``; None: slots for this configuration alone);
    ``owner``: the sweep trial whose items these are. Whatever
    happens, the parent and every child end in a terminal state: FINISHED, or FAILED for a
    seed that produced no result (and then the parent too), or KILLED on Ctrl-C. A seed run
    left unfinished by an earlier, interrupted attempt is retired and redone.

    Adaptive seeds (``seeds: {min, max, until}``, ``distfair.experiment.adaptive``): the seeds
    0, 1, 2, ... go to the slots in waves until the rule stops; the parent records why
    (tag ``distfair.seeds.stop_reason``), ``n_waves`` and ``<metric>_ci95_halfwidth``.
    """
    from distfair.data import DATASET_NOTICES
    from distfair.distributed import run_configuration

    rule = seed_rule(cfg)
    seeds = planned_seeds(cfg)
    if init_paths is None:
        init_paths = resolve_init_from(cfg, tracking_uri, storage_path)
    if references is None:
        references = resolve_references(cfg, tracking_uri, storage_path)
    tracking.set_outage_log(log)        # "tracking server ... unreachable / back" in the progress output
    experiment_id = tracking.prepare_experiment(tracking_uri, experiment)
    digest = config_hash(cfg)
    flat = flatten(cfg)
    if rule is None:
        flat["seeds"] = seeds
    run_name = parent_run_name or f"{Path(config_path).stem}-{digest[:8]}"
    if lookup is None and resume_parent is None:   # not a sweep trial nor a resumed attempt: a repeat gets "#2"
        run_name = tracking.next_run_name(tracking_uri, experiment_id, run_name, digest)
    parent_tags = {"distfair.config_file": str(config_path), "distfair.config_hash": digest,
                   "distfair.defense": cfg["defense"]["name"], "distfair.dataset": cfg["dataset"]["name"],
                   **environment_tags(), **(extra_tags or {})}
    if resume_parent is not None:       # its FINISHED seed runs are kept below, the others redone
        parent, run_name = resume_parent, tracking.reopen_run(tracking_uri, resume_parent)
    else:
        parent = tracking.start_parent_run(
            tracking_uri, experiment_id, flat, run_name=run_name, description=run_description(cfg),
            tags=parent_tags, lookup=lookup,
            files={CONFIG_ARTIFACT: resolved_config_yaml(cfg if rule is not None else {**cfg, "seeds": seeds})})
    existing = tracking.seed_run_states(tracking_uri, experiment_id, parent)
    finished = sorted(s for s in seeds if existing.get(s, (None, None))[1] == "FINISHED")
    log(f"MLflow: experiment {experiment!r}, parent run {parent} ({tracking_uri})"
        + (f"; seeds {finished} already finished" if finished else ""))

    opened: dict[int, str] = {}         # seed -> the seed run this attempt opened

    def train(todo: list[int]) -> dict[int, str]:
        """Train ``todo`` in new seed runs (an earlier attempt's unfinished run of one is retired);
        ``{seed: why}`` of those without a result."""
        for seed in todo:
            if seed in existing:
                tracking.retire_run(tracking_uri, existing[seed][0])
        children = open_seed_runs(tracking_uri, experiment_id, parent, cfg, todo,
                                  configuration_tags={**parent_tags, **(lookup or {})})
        opened.update(children)
        try:
            outcome = run_configuration({**cfg, "seeds": todo}, child_run_ids=children, init_paths=init_paths,
                                        references=references,
                                        seed_logger=tracking.seed_logger_factory(tracking_uri, storage_path),
                                        run_name=ray_run_name or _ray_run_name(parent, children),
                                        storage_path=storage_path, log=log, pool=pool, owner=owner)
        except KeyboardInterrupt:
            open_runs = [*children.values(), parent]
            tracking.mark_runs(tracking_uri, open_runs, "KILLED")
            raise Interrupted(tracking_uri, open_runs) from None
        except Exception:
            tracking.mark_runs(tracking_uri, [*children.values(), parent], "FAILED")
            raise
        return outcome.errors

    stopping = None
    if rule is None:
        todo = [s for s in seeds if s not in finished]
        outcome_errors = train(todo) if todo else {}
    else:
        planned = list(seeds)
        waves = run_waves(rule, wave=default_wave(rule, pool), train=train, log=log,
                          values=lambda: _rule_values(tracking_uri, experiment_id, parent, planned,
                                                      rule["until"]["metric"]))
        outcome_errors = waves.errors
        seeds = sorted(set(finished) | set(waves.started))      # the seeds this configuration ran
    per_seed = tracking.finished_seed_metrics(tracking_uri, experiment_id, parent)
    per_seed = {s: m for s, m in per_seed.items() if s in seeds}
    errors = {s: outcome_errors.get(s, "no finished MLflow run") for s in seeds if s not in per_seed}
    tracking.mark_runs(tracking_uri, [opened[s] for s in errors if s in opened], "FAILED")
    if rule is not None:
        stopping = stopping_summary(rule, per_seed, reason=waves.decision.reason, ran=len(seeds), waves=waves.waves)
    summary = aggregate_seed_metrics([per_seed[s] for s in sorted(per_seed)])
    record = configuration_result(tracking_uri, experiment_id, parent,
                                  cfg={**cfg, "seeds": seeds} if rule is None else cfg,
                                  seeds=sorted(per_seed), errors=errors)
    shown = main_metrics(list(summary))
    seed_values = {m: {s: per_seed[s][m] for s in sorted(per_seed) if m in per_seed[s]} for m in shown}
    drawn = any(seed_values.values())
    attacks = cfg["eval"]["attacks"]
    tracking.log_parent_summary(
        tracking_uri, parent, summary, n_seeds=len(per_seed), status="FAILED" if errors else "FINISHED",
        configuration_record=record, seed_values=seed_values, failures=errors, stopping=stopping,
        figure_title=f"{run_name}: every seed, mean ± std, 95% CI",
        description=summary_markdown(summary, shown, seeds=sorted(per_seed), planned=seeds, errors=errors,
                                     figure=tracking.SEED_STABILITY_FIGURE if drawn else None,
                                     primary=attacks[0]["name"] if attacks else None,
                                     notice=DATASET_NOTICES.get(cfg["dataset"]["name"]), stopping=stopping))
    return RunReport(experiment=experiment, experiment_id=experiment_id, parent_run_id=parent,
                     tracking_uri=tracking_uri, seeds=sorted(per_seed), metrics=summary, errors=errors,
                     record=record, stopping=stopping)


def open_seed_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, cfg: dict, seeds: Sequence[int], *,
                   configuration_tags: Mapping[str, str]) -> dict[int, str]:
    """``{seed: run id}`` of the seed runs under a configuration run, found or created. A new
    one carries the configuration's identity (its :data:`SEED_IDENTITY_TAGS` among
    ``configuration_tags``, and every resolved config value as a param, so the UI filters and
    compares seeds by configuration or by a sweep's searched values), :func:`environment_tags`,
    and a ``config.yaml`` that reruns exactly this seed."""
    tags = {**{k: v for k, v in configuration_tags.items() if k in SEED_IDENTITY_TAGS}, **environment_tags()}
    params = {k: v for k, v in flatten(cfg).items() if k != "seeds"}
    return {s: tracking.get_or_create_seed_run(
        tracking_uri, experiment_id, parent_run_id, s, tags=tags, params=params,
        files={CONFIG_ARTIFACT: resolved_config_yaml({**cfg, "seeds": [s]})}) for s in seeds}


def configuration_result(tracking_uri: str, experiment_id: str, parent_run_id: str, *, cfg: dict,
                         seeds: list[int], errors: dict[int, str]) -> dict:
    """The configuration's result record, from the ``result.json`` of its finished seed runs
    (the same runs the parent's statistics come from). A finished seed run without a record
    (recorded before records existed) is listed under ``errors``."""
    records = tracking.finished_seed_records(tracking_uri, experiment_id, parent_run_id)
    errors = dict(errors)
    errors.update({s: "finished MLflow run has no result.json" for s in seeds if s not in records})
    return configuration_record(cfg, [records[s] for s in seeds if s in records], errors=errors)


def _rule_values(tracking_uri: str, experiment_id: str, parent: str, seeds: list[int],
                 metric: str) -> dict[int, float | None]:
    """``{seed: the rule's metric or None}`` over the configuration's FINISHED seed runs."""
    per_seed = tracking.finished_seed_metrics(tracking_uri, experiment_id, parent)
    return {s: m.get(metric) for s, m in per_seed.items() if s in seeds}


def _ray_run_name(parent: str, children: dict[int, str]) -> str:
    """Deterministic for one attempt (never a timestamp), new when interrupted seeds are redone
    in new child runs, so Ray Train never resumes a redone seed from an old checkpoint."""
    attempt = hashlib.sha256(",".join(sorted(children.values())).encode()).hexdigest()[:8]
    return f"distfair-{parent[:12]}-{attempt}"
