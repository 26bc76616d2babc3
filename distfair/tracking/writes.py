"""Batched writes into a run: metrics, params, tags and small text artifacts.

Against a tracking server one call per value costs ~40 ms (docs/ray-notes.md, "MLflow"), so
values go in ``log_batch`` calls of at most MLflow's batch sizes; non-finite metrics are
skipped and long params cut to MLflow's limit.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Iterable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

MAX_BATCH = 100
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000          # MLflow's limit on a tag's value


def _batched(items: list, size: int = MAX_BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _log(client: MlflowClient, run_id: str, metrics=(), params=(), tags=()) -> None:
    metrics, params, tags = list(metrics), list(params), list(tags)
    for chunk in _batched(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _batched(params):
        client.log_batch(run_id, params=chunk)
    for chunk in _batched(tags):
        client.log_batch(run_id, tags=chunk)


def _metrics(values: dict, step: int = 0) -> list[Metric]:
    """Finite numbers only: None (undefined, e.g. target shares without any error) is skipped."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_LEN]


def _log_texts(client: MlflowClient, run_id: str, files: dict[str, str]) -> None:
    """Text artifacts (``{file name: content}``) at the run's artifact root."""
    if not files:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            client.log_artifact(run_id, str(Path(tmp) / name))
