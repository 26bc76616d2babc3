"""The training engine: one (configuration, seed) trained and then evaluated by
``distfair.evaluation``. Plain PyTorch, DDP-aware, no Ray and no MLflow; it never imports the
configuration layer, Ray or MLflow (``tests/test_import_direction.py``)."""
from distfair.engine.train import SeedResult, metric_record, parameter_fingerprint, run_seed

__all__ = ["SeedResult", "metric_record", "parameter_fingerprint", "run_seed"]
