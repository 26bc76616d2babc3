"""Stability of metrics across seeds: mean, sample std, range and 95% t-interval.

Sy-FAR §6.5 / App. C and methods.md "Metrics": for every metric, mean, sample std
(ddof=1), min, max and a 95% interval over the seeds of one configuration.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from scipy import stats

__all__ = ["aggregate_seed_metrics", "summarize"]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def summarize(values: Sequence[float | None]) -> dict:
    """Summary statistics of one metric over seeds; ``None`` entries are dropped.

    Returns ``{"mean", "std", "min", "max", "ci95_low", "ci95_high", "n", "values"}``:
    ``std`` is the sample std (ddof=1); the 95% interval is
    ``mean -+ t_{0.975, n-1} * std / sqrt(n)`` (Student t, ``scipy.stats.t``). ``std`` and
    the interval are ``None`` when n < 2; with n = 0 every statistic is ``None``,
    ``n`` is 0 and ``values`` is ``[]``. All numbers are plain Python floats.

    Raises:
        ValueError: an entry that is neither ``None`` nor a finite real number (use ``None``
            to mark a missing value; NaN is never averaged silently).
    """
    kept: list[float] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        if not _is_number(value) or not math.isfinite(float(value)):
            raise ValueError(f"values[{index}]: must be a finite number or None, got {value!r}")
        kept.append(float(value))
    n = len(kept)
    summary = {"mean": None, "std": None, "min": None, "max": None,
               "ci95_low": None, "ci95_high": None, "n": n, "values": kept}
    if n == 0:
        return summary
    mean = math.fsum(kept) / n
    summary.update(mean=mean, min=min(kept), max=max(kept))
    if n >= 2:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1))
        half_width = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        summary.update(std=std, ci95_low=mean - half_width, ci95_high=mean + half_width)
    return summary


def aggregate_seed_metrics(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, dict]:
    """``{name: summarize(values across seeds)}``, names sorted.

    ``per_seed`` holds one flat dict per seed (metric name -> float or ``None``). A name
    missing from a seed, or ``None`` there, simply contributes nothing for that seed.
    Non-numeric values (lists such as ``per_class_acc``, strings, bools) are ignored; a
    name that never has a numeric or ``None`` value is left out of the result.

    Raises:
        TypeError: an element of ``per_seed`` that is not a mapping.
    """
    collected: dict[str, list[float | None]] = {}
    for index, metrics in enumerate(per_seed):
        if not isinstance(metrics, Mapping):
            raise TypeError(f"per_seed[{index}]: must be a dict, got {type(metrics).__name__}")
        for name, value in metrics.items():
            if value is None or _is_number(value):
                collected.setdefault(name, []).append(value)
    return {name: summarize(collected[name]) for name in sorted(collected)}
