"""Evaluation of a trained model: plain PyTorch, DDP-aware, no Ray and no MLflow.

- ``predict.py``: the predict step (``Predictor``: a class or an abstention, ``ABSTAIN`` = -1,
  and a score per sample; default arg-max), per-sample predictions and confusion counts, clean and under attack,
  sharded over DDP ranks (also SpecNorm's per-epoch confusion matrix and the engine's
  per-epoch validation metrics).
- ``suite.py``: the test-set evaluation of one seed (every ``eval.attacks`` entry, flags,
  targeted modes, self-checks) and the validation evaluation sweeps select on.
- ``subgroups.py``: ``eval.subgroups`` resolved against a dataset, and the subgroup report.
- ``checks.py``: the self-checks (AutoAttack's sanity checks).

Sits with the other math packages: it imports ``attacks``, ``data``, ``metrics`` and
``distfair.seeding``, never the engine, the configuration, Ray or MLflow
(``tests/test_import_direction.py``).
"""
from distfair.evaluation import checks
from distfair.evaluation.predict import (ABSTAIN, ArgmaxPredictor, EvaluationError, Predictions, Predictor,
                                         confusion_counts, predict, predict_dataset, shard)
from distfair.evaluation.subgroups import Grouping, metric_safe, resolve_groupings, subgroup_report
from distfair.evaluation.suite import (FinalEvaluation, build_eval_attack, evaluation_metrics, final_evaluation,
                                       validation_evaluation)

__all__ = ["ABSTAIN", "ArgmaxPredictor", "EvaluationError", "Predictor", "predict", "FinalEvaluation", "Grouping", "Predictions", "build_eval_attack", "checks",
           "confusion_counts", "evaluation_metrics", "final_evaluation", "metric_safe", "predict_dataset",
           "resolve_groupings", "shard", "subgroup_report", "validation_evaluation"]
