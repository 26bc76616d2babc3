"""The tags that make distfair's MLflow record (no MLflow here).

A run's role in the hierarchy (``distfair.role``: configuration, seed, sweep, analysis,
report), a seed run's seed and its parent (MLflow's own ``mlflow.parentRunId``), the
experiment's type, the run description and why a run ended FAILED.
"""
from __future__ import annotations

TAG_ROLE = "distfair.role"
TAG_SEED = "distfair.seed"
TAG_PARENT = "mlflow.parentRunId"

#: MLflow 3's experiment type: ``custom_model_development`` is a model training experiment
#: (the UI's "Machine learning" type), ``genai_development`` one of GenAI apps and agents
#: (mlflow/server/js: ExperimentKind; set through the same tag by the UI's type selector)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: MLflow's run description (shown as "Description" in the UI)
TAG_DESCRIPTION = "mlflow.note.content"

#: why a seed or configuration run ended FAILED (a diverged seed's ``loss is nan at epoch e, batch b``)
TAG_FAILURE_REASON = "distfair.failure_reason"

#: why an adaptive configuration (``seeds: {min, max, until}``) stopped adding seeds:
#: ``target reached`` or ``max seeds`` (``distfair.metrics.STOP_REASONS``)
TAG_STOP_REASON = "distfair.seeds.stop_reason"

#: the tags of a report run (``distfair report`` over an experiment or a list of runs)
REPORT_TAGS = {"distfair.kind": "report", TAG_ROLE: "report"}
