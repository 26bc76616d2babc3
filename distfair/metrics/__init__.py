"""Confusion matrices, fairness metrics, the Sy-FAR symmetry loss and seed statistics."""

from distfair.metrics._confusion import confusion_matrix
from distfair.metrics._fairness import fairness_metrics
from distfair.metrics._soft import soft_confusion_matrix, symmetry_loss
from distfair.metrics._stability import aggregate_seed_metrics, summarize

__all__ = [
    "aggregate_seed_metrics",
    "confusion_matrix",
    "fairness_metrics",
    "soft_confusion_matrix",
    "summarize",
    "symmetry_loss",
]
