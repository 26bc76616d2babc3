"""Adaptive seeds of one configuration (``seeds: {min, max, until: {metric, ci95_halfwidth}}``):
seeds 0, 1, 2, ... in waves through the command's slots until the named validation metric's 95%
interval is narrow enough or ``max`` seeds ran.

:func:`run_waves` is the loop; the decision after each wave is
:func:`distfair.metrics.seeds_decision` (the rule, and why it biases the interval, are there).
Training a wave and reading the finished seeds' values back from MLflow are passed in by
``distfair.experiment.run``, so this module is plain Python and unit-tested without Ray.

Failures are what they are for a fixed seed list: a seed that fails (diverged, or its worker
group gave up) does not stop the others; it counts as a seed run toward ``max`` and contributes
no value, the waves go on, and the configuration run ends FAILED with ``n_failed``.
``--resume`` keeps the earlier attempt's FINISHED seeds, applies the rule to them first (an
attempt killed after its last wave trains nothing more) and redoes the others, since the next
seeds are always the lowest integers without a FINISHED run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from distfair.metrics import SeedsDecision, seeds_decision


@dataclass
class WavesOutcome:
    """What the waves did: the seeds they started, those that failed (seed -> why), the last
    decision, and how many waves ran (in this attempt)."""
    started: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    decision: SeedsDecision | None = None
    waves: int = 0


def default_wave(rule: dict, pool) -> int:
    """Seeds per wave after the first: the rule's ``wave``, else the pool's worker groups (1 without one)."""
    if rule.get("wave"):
        return int(rule["wave"])
    handle = getattr(pool, "handle", pool)
    return max(1, int(getattr(handle, "slots", 1) or 1))


def decide(rule: dict, values: Mapping[int, float | None], *, ran: int, wave: int) -> SeedsDecision:
    """The rule's decision on the finished seeds' values (``{seed: value or None}``)."""
    return seeds_decision([values[s] for s in sorted(values)], ran=ran, min_seeds=rule["min"],
                          max_seeds=rule["max"], target=rule["until"]["ci95_halfwidth"], wave=wave)


def run_waves(rule: dict, *, wave: int, values: Callable[[], dict[int, float | None]],
              train: Callable[[list[int]], dict[int, str]], log: Callable[[str], None]) -> WavesOutcome:
    """Wave after wave until the rule stops.

    ``values()``: ``{seed: value of the rule's metric or None}`` over every FINISHED seed of the
    configuration (kept from an earlier attempt included); ``train(seeds)``: trains those seeds
    and returns ``{seed: why}`` for those that failed."""
    outcome = WavesOutcome()
    metric, target = rule["until"]["metric"], rule["until"]["ci95_halfwidth"]
    while True:
        current = values()
        ran = len(current) + len(outcome.errors)
        decision = decide(rule, current, ran=ran, wave=wave)
        outcome.decision = decision
        width = "n/a" if decision.halfwidth is None else f"{decision.halfwidth:.4f}"
        if decision.stop:
            log(f"seeds: stopped ({decision.reason}) after {ran} seed(s): {metric} 95% CI half-width {width} "
                f"over {decision.n} (target {target:g})")
            return outcome
        missing = [s for s, v in current.items() if v is None]
        if current and len(missing) == len(current) and ran >= rule["min"]:
            log(f"seeds: no finished seed has {metric}; the rule cannot narrow it, so the waves go on to "
                f"max {rule['max']}")
        taken = set(current) | set(outcome.errors)
        nxt, candidate = [], 0
        while len(nxt) < decision.next_seeds:
            if candidate not in taken:
                nxt.append(candidate)
            candidate += 1
        if ran:
            log(f"seeds: {metric} 95% CI half-width {width} over {decision.n} seed(s), target {target:g}: "
                f"wave {outcome.waves + 1} adds seeds {','.join(map(str, nxt))}")
        outcome.waves += 1
        outcome.started += nxt
        outcome.errors.update(train(nxt))


def stopping_summary(rule: dict, per_seed: Mapping[int, Mapping[str, float]], *, reason: str | None, ran: int,
                     waves: int | None) -> dict:
    """What a configuration run reports about its adaptive seeds (``--json``'s ``stopping``, the
    terminal line): the rule, why it stopped, how many seeds ran and finished, and the metric's
    final half-width over the finished seeds."""
    from distfair.metrics import ci95_halfwidth

    metric = rule["until"]["metric"]
    values = [m.get(metric) for _, m in sorted(per_seed.items())]
    return {"reason": reason, "metric": metric, "target": rule["until"]["ci95_halfwidth"],
            "halfwidth": ci95_halfwidth(values), "n_seeds": len(per_seed), "seeds_run": ran,
            "min": rule["min"], "max": rule["max"], "waves": waves}
