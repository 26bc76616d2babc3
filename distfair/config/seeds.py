"""The ``seeds`` block: a count, a list, or an adaptive rule.

- ``seeds: 5`` means the seeds 0, 1, 2, 3, 4; ``seeds: [0, 3, 7]`` those seeds; absent: 0, 1, 2.
- ``seeds: {min: 3, max: 20, until: {metric: val_worst_class_acc, ci95_halfwidth: 0.01}}``:
  adaptive seeds for ``distfair run``. The seeds are the integers 0, 1, 2, ... in that order;
  they run in waves (``wave``: seeds per wave after the first ``min``; null, the default, means
  as many as the command has worker groups) until the 95% interval of the named *validation*
  metric over the finished seeds is at most ``ci95_halfwidth`` wide on each side, or ``max``
  seeds ran (``distfair.experiment.adaptive``, docs/guide/adaptive-seeds.md).

The resolved configuration keeps the rule as a mapping with every key filled in
(:func:`seed_rule` reads it back; :func:`planned_seeds` lists the seeds a configuration may
run). Plain Python: no Ray, no MLflow.
"""
from __future__ import annotations

import math

from distfair.config.limits import shown
from distfair.config.schema import _Problems

#: the largest ``seeds: <count>``: far beyond any study, small enough to list
MAX_SEED_COUNT = 1_000_000
#: the keys of an adaptive rule and of its ``until``
RULE_KEYS = ("min", "max", "wave", "until")
UNTIL_KEYS = ("metric", "ci95_halfwidth")


def seed_rule(cfg: dict) -> dict | None:
    """The resolved adaptive rule (``{"min", "max", "wave", "until": {"metric",
    "ci95_halfwidth"}}``) of a resolved configuration, or None for a fixed seed list."""
    seeds = cfg.get("seeds")
    return seeds if isinstance(seeds, dict) else None


def planned_seeds(cfg: dict) -> list[int]:
    """Every seed the configuration may run: its list, or 0 .. max-1 for an adaptive rule."""
    rule = seed_rule(cfg)
    return list(range(rule["max"])) if rule is not None else list(cfg["seeds"])


def check_seeds(raw, problems: _Problems, eval_names: list[str]) -> list[int] | dict:
    """The resolved ``seeds``: a list of seeds, or the adaptive rule with its defaults filled in
    (``eval_names``: the ``eval.attacks`` names, for the message about a test-set metric)."""
    if isinstance(raw, dict):
        return _rule(raw, problems, eval_names)
    if raw is None:
        return [0, 1, 2]
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            problems.add("seeds", f"an integer count must be >= 1, got {raw}")
            return []
        if raw > MAX_SEED_COUNT:             # listing 10**30 seeds would exhaust memory here
            problems.add("seeds", f"an integer count must be <= {MAX_SEED_COUNT}, got {shown(raw)}")
            return []
        return list(range(raw))
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        problems.add("seeds", "must be a non-empty list of integers, a count, or an adaptive rule "
                              f"{{min, max, until: {{metric, ci95_halfwidth}}}}, got {shown(raw)}")
        return []
    if len(set(raw)) != len(raw):
        problems.add("seeds", f"must not repeat a seed, got {shown(raw)}")
    if any(s < 0 for s in raw):
        problems.add("seeds", f"must be non-negative, got {shown(raw)}")
    if any(s >= 2**64 for s in raw):     # torch.manual_seed's range: a larger seed fails in the worker
        problems.add("seeds", f"must be < 2**64, got {shown([s for s in raw if s >= 2**64])}")
    if len(raw) > MAX_SEED_COUNT:
        problems.add("seeds", f"must list at most {MAX_SEED_COUNT} seeds, got {len(raw)}")
    return list(raw)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rule(raw: dict, problems: _Problems, eval_names: list[str]) -> dict:
    from distfair.config.space import _not_a_selection_metric
    from distfair.results.names import known_val_metric

    for key in raw:
        if key not in RULE_KEYS:
            problems.add(f"seeds.{key}", f"unknown key; known: {', '.join(RULE_KEYS)}")
    low, high, wave, until = raw.get("min"), raw.get("max"), raw.get("wave"), raw.get("until")
    if not _integer(low) or low < 2:
        problems.add("seeds.min", f"must be an integer >= 2 (an interval needs two seeds), got {shown(low)}")
        low = None
    if not _integer(high) or not 2 <= high <= MAX_SEED_COUNT:
        problems.add("seeds.max", f"must be an integer between 2 and {MAX_SEED_COUNT}, got {shown(high)}")
        high = None
    elif low is not None and high < low:
        problems.add("seeds.max", f"must be >= seeds.min ({low}), got {high}")
    if wave is not None and (not _integer(wave) or wave < 1):
        problems.add("seeds.wave", f"must be an integer >= 1 (seeds per wave) or null (as many as there are "
                                   f"worker groups), got {shown(wave)}")
    metric = width = None
    if not isinstance(until, dict):
        problems.add("seeds.until", f"required: a mapping {{metric: <val_* metric>, ci95_halfwidth: <number>}}, "
                                    f"got {shown(until)}")
    else:
        for key in until:
            if key not in UNTIL_KEYS:
                problems.add(f"seeds.until.{key}", f"unknown key; known: {', '.join(UNTIL_KEYS)}")
        metric, width = until.get("metric"), until.get("ci95_halfwidth")
        if not isinstance(metric, str) or not known_val_metric(metric):
            problems.add("seeds.until.metric", "required" if metric is None
                         else _not_a_selection_metric(str(metric), eval_names))
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
            problems.add("seeds.until.ci95_halfwidth", f"must be a number > 0, got {shown(width)}")
        else:
            width = float(width)
    return {"min": low, "max": high, "wave": wave, "until": {"metric": metric, "ci95_halfwidth": width}}
