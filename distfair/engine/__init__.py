"""The training/evaluation engine: plain PyTorch, DDP-aware, no Ray and no MLflow."""
from distfair.engine.train import SeedResult, metric_record, parameter_fingerprint, run_seed

__all__ = ["SeedResult", "metric_record", "parameter_fingerprint", "run_seed"]
