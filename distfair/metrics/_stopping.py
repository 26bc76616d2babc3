"""When to stop adding seeds: the adaptive-seeds rule of ``distfair run``.

The rule (a fixed-width sequential confidence interval, Chow & Robbins 1965, looked at after
each wave instead of after each seed): after every wave, take the named metric's values over
the finished seeds; stop at the first look with at least ``min_seeds`` values whose 95%
interval half-width ``t_{0.975, n-1} * s / sqrt(n)`` is at most ``target``, or once
``max_seeds`` seeds ran (a failed seed counts as run). The half-width is the one of the interval
every configuration run reports (:func:`~distfair.metrics.summarize`: Student t), before it is
clipped to the metric's range: clipping at 0 or 1 would make an accuracy near 1 look precise.

Stopping when the interval is narrow biases it: the rule tends to stop on a sample whose spread
happens to be small, so the final interval covers the true mean less often than 95%.
``scripts/adaptive_seeds_bias.py`` measures how much (docs/guide/adaptive-seeds.md).

Plain Python: no Ray, no MLflow, no configuration.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distfair.metrics._stability import summarize

#: why an adaptive configuration stopped adding seeds (its configuration run's tag)
STOP_TARGET = "target reached"
STOP_MAX = "max seeds"
STOP_REASONS = (STOP_TARGET, STOP_MAX)


def ci95_halfwidth(values: Sequence[float | None]) -> float | None:
    """Half the width of the 95% Student-t interval of the mean of ``values`` (``None`` entries
    dropped), unclipped; None with fewer than two values."""
    s = summarize(values)
    if s["ci95_low"] is None:
        return None
    return (s["ci95_high"] - s["ci95_low"]) / 2.0


@dataclass(frozen=True)
class SeedsDecision:
    """One look of the rule: stop (and why) or how many seeds the next wave adds."""
    stop: bool
    reason: str | None          # STOP_TARGET or STOP_MAX when stopping
    halfwidth: float | None     # over the ``n`` values (None: fewer than two)
    n: int                      # values the half-width is over
    next_seeds: int             # seeds of the next wave (0 when stopping)


def seeds_decision(values: Sequence[float | None], *, ran: int, min_seeds: int, max_seeds: int, target: float,
                   wave: int) -> SeedsDecision:
    """The rule's decision after a wave (see the module docstring).

    ``values``: the metric over the finished seeds (``None``: a finished seed without it);
    ``ran``: the seeds run so far, failed ones included (they count toward ``max_seeds``);
    ``wave``: the seeds a later wave adds. The first wave brings the run up to ``min_seeds``.
    """
    if min_seeds < 2 or max_seeds < min_seeds or target <= 0 or wave < 1:
        raise ValueError(f"need 2 <= min_seeds <= max_seeds, target > 0 and wave >= 1, got min_seeds={min_seeds}, "
                         f"max_seeds={max_seeds}, target={target}, wave={wave}")
    halfwidth = ci95_halfwidth(values)
    n = sum(v is not None for v in values)
    if n >= min_seeds and halfwidth is not None and halfwidth <= target:
        return SeedsDecision(True, STOP_TARGET, halfwidth, n, 0)
    if ran >= max_seeds:
        return SeedsDecision(True, STOP_MAX, halfwidth, n, 0)
    more = min_seeds - ran if ran < min_seeds else wave
    return SeedsDecision(False, None, halfwidth, n, min(more, max_seeds - ran))
