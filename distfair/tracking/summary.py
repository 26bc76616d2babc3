"""A configuration run's summary over its seeds: statistics, records, figure and description."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping

from mlflow.tracking import MlflowClient

from distfair.results import record as result_record
from distfair.results.names import CI95_HALFWIDTH, SEED_STATISTICS, stat_name
from distfair.tracking.client import _client
from distfair.tracking.tags import TAG_DESCRIPTION, TAG_FAILURE_REASON, TAG_STOP_REASON
from distfair.tracking.writes import MAX_TAG_LEN, _log, _metrics

#: the parent's seed-stability figure (``distfair.plotting.seed_stability``), as an artifact path
SEED_STABILITY_FIGURE = "plots/seed_stability.png"


def log_parent_summary(uri: str, parent_run_id: str, summary: dict[str, dict], *, n_seeds: int,
                       status: str = "FINISHED", configuration_record: dict | None = None,
                       seed_values: dict[str, dict[int, float]] | None = None, figure_title: str = "",
                       description: str | None = None, failures: Mapping[int, str] | None = None,
                       stopping: Mapping | None = None) -> None:
    """``<name>_mean/_std/_min/_max/_ci95_low/_ci95_high`` for every child metric, ``n_seeds``,
    a ``seed_summary.json`` artifact (and ``configuration_result.json``, the configuration's
    result record, when given), then close the parent run with ``status``.

    ``seed_values`` (``{metric: {seed: value}}``, metrics of ``summary``): drawn as
    :data:`SEED_STABILITY_FIGURE` with the summary's statistics. ``description``: a Markdown
    section put at the top of the run's description (tag :data:`TAG_DESCRIPTION`; the MLflow
    UI shows only the description's first lines before "Show more"), the text the run was
    created with below it; an earlier section with the same first line (the summary of an
    earlier attempt, at the top or, written by older versions, at the end), up to its last
    line, is replaced. ``failures``
    (seed -> why it has no result): logged as metric ``n_failed`` and, when there are any, as
    tag :data:`TAG_FAILURE_REASON` (``seed 2: loss is nan at epoch 1, batch 3; ...``).
    ``stopping`` (adaptive seeds: ``{"reason", "metric", "halfwidth", "waves"}``): tag
    :data:`TAG_STOP_REASON`, metrics ``n_waves`` and ``<metric>_ci95_halfwidth`` (the half-width
    the rule stopped on; absent with fewer than two values)."""
    client = _client(uri)
    values = {"n_seeds": n_seeds}
    if stopping is not None:
        client.set_tag(parent_run_id, TAG_STOP_REASON, str(stopping["reason"]))
        values["n_waves"] = stopping["waves"]
        values[stat_name(stopping["metric"], CI95_HALFWIDTH)] = stopping["halfwidth"]
    if failures is not None:
        values["n_failed"] = len(failures)
        if failures:
            reasons = "; ".join(f"seed {s}: {why}" for s, why in sorted(failures.items()))
            client.set_tag(parent_run_id, TAG_FAILURE_REASON, reasons[:MAX_TAG_LEN])
        elif TAG_FAILURE_REASON in client.get_run(parent_run_id).data.tags:   # an earlier attempt's
            client.delete_tag(parent_run_id, TAG_FAILURE_REASON)
    for name, stats in summary.items():
        for stat in SEED_STATISTICS:
            values[stat_name(name, stat)] = stats.get(stat)
    _log(client, parent_run_id, metrics=_metrics(values))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed_summary.json"
        path.write_text(json.dumps(summary, indent=1))
        client.log_artifact(parent_run_id, str(path))
        if configuration_record is not None:
            path = Path(tmp) / result_record.CONFIGURATION_RECORD_NAME
            path.write_text(json.dumps(configuration_record, indent=1, allow_nan=False, default=str))
            client.log_artifact(parent_run_id, str(path))
        drawn = {m: v for m, v in (seed_values or {}).items() if v and m in summary}
        if drawn:
            from distfair.plotting import seed_stability

            folder, name = SEED_STABILITY_FIGURE.rsplit("/", 1)
            (Path(tmp) / folder).mkdir()
            seed_stability(drawn, summary, figure_title, Path(tmp) / folder / name)
            client.log_artifact(parent_run_id, str(Path(tmp) / folder / name), folder)
    if description:
        _put_description_section(client, parent_run_id, description)
    # A parent the driver already closed as KILLED (a trial stopped early by the scheduler, or
    # Ctrl-C) keeps that status: its configuration thread may still be finishing (as seed runs
    # closed by the driver are never reopened, see SeedRunLogger)
    if client.get_run(parent_run_id).info.status != "KILLED":
        client.set_terminated(parent_run_id, status)


def _put_description_section(client: MlflowClient, run_id: str, section: str) -> None:
    """``section`` first in the run's description, then the rest of it. A section from an
    earlier call starts with the same first line and ends with the same last line; it is taken
    out (to the end of the text when that last line is missing) before the new one goes on top.
    A text too long for a tag loses its end, so the section stays whole."""
    current = client.get_run(run_id).data.tags.get(TAG_DESCRIPTION, "")
    lines = section.strip().splitlines()
    heading, last = lines[0], lines[-1]
    at = current.find(heading)
    if at >= 0:
        end = current.find(last, at + len(heading)) if last != heading else -1
        current = current[:at] + (current[end + len(last):] if end >= 0 else "")
    text = "\n\n".join(p for p in (section.strip(), current.strip()) if p)
    client.set_tag(run_id, TAG_DESCRIPTION, text if len(text) <= MAX_TAG_LEN else text[:MAX_TAG_LEN - 2] + " …")
