"""Figures saved as PNG (matplotlib, headless Agg). Plain drawing functions: no MLflow, no Ray,
and no knowledge of evaluation modes: ``distfair.evaluation.seed_figures`` and the evaluation
summaries decide which figures a seed run gets and call these.

Sy-FAR figure styles: per-class robust accuracy bars (Fig. 1), asymmetry heatmap (Fig. 4),
confusion heatmap (Fig. 5), per-group bars (Fig. 7). Counts and abstentions follow
``fairness_metrics`` (see :mod:`distfair.plotting.confusion`).

- ``common.py``: what every figure shares (pyplot, class ticks, saving, the class heatmap,
  ``file_safe``);
- ``confusion.py``: one evaluation's confusion matrix, asymmetry gaps, target shares and
  targeted success;
- ``accuracy.py``: per-class and per-group accuracy bars, accuracy curves, labelled heatmaps;
- ``seeds.py``: figures across seeds (the report's comparisons, one configuration's stability).
"""
from __future__ import annotations

from distfair.plotting.accuracy import accuracy_curves, group_bars, heatmap, per_class_bars
from distfair.plotting.common import file_safe
from distfair.plotting.confusion import (asymmetry_heatmap, asymmetry_matrix, confusion_heatmap, confusion_rates,
                                         target_share_bars, target_shares, target_success_heatmap)
from distfair.plotting.seeds import (SEED_MARKERS, mean_asymmetry_heatmap, mean_rates_heatmap, pareto_whiskers,
                                     seed_error_bars, seed_stability, seed_strips, stability_bars)

__all__ = [
    "accuracy_curves", "asymmetry_heatmap", "asymmetry_matrix", "confusion_heatmap", "confusion_rates", "file_safe",
    "group_bars", "heatmap", "mean_asymmetry_heatmap", "mean_rates_heatmap", "pareto_whiskers", "per_class_bars",
    "SEED_MARKERS", "seed_error_bars", "seed_stability", "seed_strips", "stability_bars", "target_share_bars",
    "target_shares", "target_success_heatmap",
]
