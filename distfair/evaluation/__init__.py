"""Evaluation of a trained model: plain PyTorch, DDP-aware, no Ray and no MLflow.

- ``predict.py``: the predict step (``Predictor``: a class or an abstention, ``ABSTAIN`` = -1,
  and a score per sample; default arg-max), per-sample predictions and confusion counts,
  clean and under attack, sharded over DDP ranks (also SpecNorm's per-epoch confusion matrix
  and the engine's per-epoch validation metrics).
- ``suite.py``: the test-set evaluation of one seed (every ``eval.attacks`` entry, flags,
  targeted modes) and the validation evaluation sweeps select on; each evaluation yields its
  per-sample records and core metrics (``entry_result``).
- ``summaries/``: the evaluation summaries, plug-ins that read every evaluation's records
  (subgroup fairness, targeted success, self-checks, AUC_acc over a budget grid, ...): one
  module and one registry line each, shared contract tests.
- ``subgroups.py``: ``eval.subgroups`` resolved against a dataset, and the subgroup report.
- ``subgroup_spec.py``: the forms of an ``eval.subgroups`` entry, their defaults and checks (pure
  Python: the configuration's first pass reads it).
- ``checks.py``: the self-check functions (AutoAttack's sanity checks).
- ``seed_figures.py``: every figure of a seed run, from its result (the drawing is ``distfair.plotting``).

Sits with the other math packages: it imports ``attacks``, ``data``, ``metrics``, ``plots``
and ``distfair.seeding``, never the engine, the configuration, Ray or MLflow
(``tests/test_import_direction.py``).
"""
from distfair.registry import lazy_package

__all__ = ["ABSTAIN", "REJECT_RULES", "ArgmaxPredictor", "EntryResult", "EvaluationError", "EvaluationMetrics", "FinalEvaluation",
           "Grouping", "Predictions", "Predictor", "SUMMARIES", "Summary", "SummaryContext", "SummaryOutput",
           "ValidationEvaluation", "build_eval_attack", "checks", "confusion_counts", "entry_result",
           "evaluation_metrics", "final_evaluation", "metric_safe", "predict", "predict_dataset",
           "rejected_at", "resolve_groupings", "shard", "subgroup_report", "validation_evaluation"]

# imported on first use, so that ``distfair.evaluation.summaries`` (whose names the configuration
# checks) is importable without PyTorch
lazy_package(__name__, {
    "checks": ".checks",
    **{name: f".predict:{name}" for name in ("ABSTAIN", "REJECT_RULES", "ArgmaxPredictor", "EvaluationError",
                                              "Predictions", "Predictor", "confusion_counts", "predict",
                                              "predict_dataset", "rejected_at", "shard")},
    **{name: f".subgroups:{name}" for name in ("Grouping", "metric_safe", "resolve_groupings", "subgroup_report")},
    **{name: f".suite:{name}" for name in ("EvaluationMetrics", "FinalEvaluation", "ValidationEvaluation",
                                            "build_eval_attack", "entry_result", "evaluation_metrics",
                                            "final_evaluation", "validation_evaluation")},
    **{name: f".summaries:{name}" for name in ("SUMMARIES", "EntryResult", "Summary", "SummaryContext",
                                                "SummaryOutput")},
})
