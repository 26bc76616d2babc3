"""distfair: fairness-aware adversarial robustness, trained with Ray Train over seeds and
recorded in MLflow. The math (``models``, ``data``, ``attacks``, ``defenses``, ``metrics``,
``engine``) is plain PyTorch; Ray lives in ``distfair.distributed``, MLflow in
``distfair.tracking``, the command line in ``distfair.cli``."""

__version__ = "0.1.0"
