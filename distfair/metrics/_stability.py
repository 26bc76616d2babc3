"""Stability of metrics across seeds: mean, sample std, range and 95% t-interval.

Sy-FAR §6.5 / App. C and methods.md "Metrics": for every metric, mean, sample std
(ddof=1), min, max and a 95% interval over the seeds of one configuration.

The interval is Student's t interval of the mean, clipped to the metric's declared range
(:data:`UNIT_INTERVAL_FAMILIES`, :func:`metric_range`): an accuracy's interval over two seeds
is ``[0.0412, 1.0]``, not ``[0.0412, 1.1303]``. Metrics without a declared range (losses,
timings, ``nsd``, the grid-dependent AUCs, anything new) are never clipped.

The range rules (:data:`METRIC_RANGES`, :func:`metric_family`, :func:`metric_range`, and the two
key prefixes :func:`metric_family` strips) are defined here because the seed statistics need
them and ``metrics`` sits below ``results``; every other module reads them, with the rest of
the metric naming, from ``distfair.results.names``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence


__all__ = ["BOOTSTRAPPED_FAMILIES", "BOOTSTRAP_BOUNDS", "CLEAN_PREFIX", "INTERVAL_NOTE", "METRIC_RANGES",
           "UNBOUNDED_FAMILIES", "UNIT_INTERVAL_FAMILIES", "VAL_PREFIX", "aggregate_seed_metrics", "bound_family",
           "metric_family", "metric_range", "summarize"]

#: the key prefixes of the validation split and of the clean evaluation (``val_clean_acc``); the
#: rest of the key grammar is ``distfair.results.names``, which builds every key with these
VAL_PREFIX, CLEAN_PREFIX = "val_", "clean_"

#: metric families whose every value is a proportion in [0, 1]: accuracies (clean, attacked,
#: per group, per ensemble stage), differences and maxima of accuracies or of row-normalised
#: confusion rates (``acc_gap``, ``group_gap``, the asymmetry gaps), target confusion shares and
#: their std, rates (rejection, false rejection, targeted success), and AUC_acc on the normalised
#: log-ε axis with its parity (``auc_acc_logeps``). Their seed interval is
#: clipped to [0, 1].
UNIT_INTERVAL_FAMILIES = frozenset({
    "acc", "robust_acc", "worst_class_acc", "worst10_acc", "acc_gap", "max_asym_gap", "asym_gap",
    "tgt_max", "tgt_min", "tgt_std", "rejection_rate", "false_rejection_rate", "group_acc", "group_gap",
    "max_group_asym", "max_bipartition_asym", "group_rejection", "stage_acc", "target_success_rate",
    "auc_acc_logeps", "group_auc_acc_logeps", "defense_parity_logeps",
})
#: the ends of an interval over speakers (speech summaries): family ``<family>_lo`` / ``<family>_hi``
BOOTSTRAP_BOUNDS = ("lo", "hi")
#: the speech summaries' families with a speaker-bootstrap interval (``distfair.evaluation.summaries``)
BOOTSTRAPPED_FAMILIES = ("group_auc_acc", "defense_parity", "group_auc_fpr", "fpr_parity")


def bound_family(family: str, end: str) -> str:
    """The family of one end of ``family``'s speaker-bootstrap interval: ``fpr_parity``, ``lo``
    -> ``fpr_parity_lo`` (keys ``fpr_parity_lo/<attr>``, the same fields as ``family``)."""
    if end not in BOOTSTRAP_BOUNDS:
        raise ValueError(f"an interval end is one of {', '.join(BOOTSTRAP_BOUNDS)}, got {end!r}")
    return f"{family}_{end}"


#: metric families declared unbounded (no interval is clipped): ``nsd`` (std / mean, may exceed
#: 1), the symmetry losses, the speech summaries' areas over a configured grid (not
#: normalised by its width) and their parities, the bounds of their speaker-bootstrap
#: intervals (``<family>_lo`` / ``<family>_hi``), the subgroups' sample counts ``group_n``
#: (evaluated) and ``group_train_n`` (training set), and the loudness SNRs in dB (``snr_db``,
#: ...). A family declared nowhere (losses, timings, anything new) is not clipped either.
UNBOUNDED_FAMILIES = frozenset({
    "nsd", "sym_loss", "soft_sym_loss", "sym", "soft_sym", "auc_acc", "group_auc_acc", "defense_parity",
    "auc_fpr", "group_auc_fpr", "fpr_parity", "group_n", "group_train_n",
    "snr_db", "group_snr_db", "noise_snr_db", "group_noise_snr_db",
    *(bound_family(family, end) for family in BOOTSTRAPPED_FAMILIES for end in BOOTSTRAP_BOUNDS),
})
#: how every table and description names the seed interval (one wording everywhere)
INTERVAL_NOTE = "95% CI: Student-t interval of the mean, clipped to [0, 1] for accuracies, gaps and rates"
#: the declared range of every known metric family (None: unbounded)
METRIC_RANGES: dict[str, tuple[float, float] | None] = {
    **dict.fromkeys(UNBOUNDED_FAMILIES), **dict.fromkeys(UNIT_INTERVAL_FAMILIES, (0.0, 1.0))}


def metric_family(key: str) -> str:
    """The metric family of an MLflow metric key, by the naming rules of the seed runs
    (``distfair.engine.train.metric_record``, ``distfair.results.record``): the ``val_`` /
    ``val_clean_`` / ``clean_`` prefix and an evaluation's ``<name>/`` prefix dropped, nested
    fields (``/<attribute>/<group>``) too: ``pgd20/group_acc/gender/F`` -> ``group_acc``,
    ``val_clean_acc`` -> ``acc``, ``clean_false_rejection_rate`` -> ``false_rejection_rate``."""
    name = key
    for prefix in (VAL_PREFIX + CLEAN_PREFIX, VAL_PREFIX, CLEAN_PREFIX):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    parts = name.split("/")
    if parts[0] not in METRIC_RANGES and len(parts) > 1:
        return parts[1]                        # <evaluation>/<metric>[/<field>...]
    return parts[0]


def metric_range(key: str) -> tuple[float, float] | None:
    """The declared range (low, high) of a metric key's values, or None when undeclared
    (then its seed interval is not clipped)."""
    return METRIC_RANGES.get(metric_family(key))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def summarize(values: Sequence[float | None], *, bounds: tuple[float, float] | None = None) -> dict:
    """Summary statistics of one metric over seeds; ``None`` entries are dropped.

    Returns ``{"mean", "std", "min", "max", "ci95_low", "ci95_high", "n", "values"}``:
    ``std`` is the sample std (ddof=1); the 95% interval is
    ``mean -+ t_{0.975, n-1} * std / sqrt(n)`` (Student t, ``scipy.stats.t``), clipped to
    ``bounds`` = (low, high), the metric's range (:func:`metric_range`), when given. ``std`` and
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
        from scipy import stats      # here, not at import: scipy.stats costs every Ray worker ~1 s to import

        half_width = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
        if bounds is not None:
            low, high = max(low, float(bounds[0])), min(high, float(bounds[1]))
        summary.update(std=std, ci95_low=low, ci95_high=high)
    return summary


def aggregate_seed_metrics(per_seed: Sequence[Mapping[str, float | None]], *,
                           bounds: Callable[[str], tuple[float, float] | None] | None = metric_range
                           ) -> dict[str, dict]:
    """``{name: summarize(values across seeds)}``, names sorted; each interval clipped to
    the name's declared range (``bounds(name)``, by default :func:`metric_range`; None: never clipped).

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
    return {name: summarize(collected[name], bounds=None if bounds is None else bounds(name))
            for name in sorted(collected)}
