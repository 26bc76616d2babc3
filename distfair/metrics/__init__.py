"""Confusion matrices, fairness and subgroup metrics, Sy-FAR symmetry loss, seed statistics and the
adaptive-seeds stopping rule."""

from distfair.metrics._confusion import confusion_matrix
from distfair.metrics._fairness import fairness_metrics, worst10_is_worst_class
from distfair.metrics._soft import soft_confusion_matrix, symmetry_loss
from distfair.metrics._stability import (BOOTSTRAP_BOUNDS, BOOTSTRAPPED_FAMILIES, CLEAN_PREFIX, INTERVAL_NOTE,
                                        METRIC_RANGES, UNBOUNDED_FAMILIES, UNIT_INTERVAL_FAMILIES, VAL_PREFIX,
                                        aggregate_seed_metrics, bound_family, metric_family, metric_range, summarize)
from distfair.metrics._stopping import (STOP_MAX, STOP_REASONS, STOP_TARGET, SeedsDecision, ci95_halfwidth,
                                       seeds_decision)
from distfair.metrics._subgroups import group_metrics, max_bipartition_asym, subgroup_matrix

__all__ = [
    "BOOTSTRAPPED_FAMILIES",
    "BOOTSTRAP_BOUNDS",
    "CLEAN_PREFIX",
    "INTERVAL_NOTE",
    "METRIC_RANGES",
    "UNBOUNDED_FAMILIES",
    "UNIT_INTERVAL_FAMILIES",
    "VAL_PREFIX",
    "STOP_MAX",
    "STOP_REASONS",
    "STOP_TARGET",
    "SeedsDecision",
    "aggregate_seed_metrics",
    "bound_family",
    "ci95_halfwidth",
    "confusion_matrix",
    "fairness_metrics",
    "group_metrics",
    "max_bipartition_asym",
    "metric_family",
    "metric_range",
    "seeds_decision",
    "soft_confusion_matrix",
    "subgroup_matrix",
    "summarize",
    "symmetry_loss",
    "worst10_is_worst_class",
]
