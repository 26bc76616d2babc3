"""distfair: fairness-aware adversarial robustness, trained with Ray Train over seeds and
recorded in MLflow. The math (``models``, ``data``, ``attacks``, ``defenses``, ``metrics``,
``evaluation``) and the ``engine`` that trains one seed are plain PyTorch; Ray lives in
``distfair.distributed``, MLflow in ``distfair.tracking``, the command line in
``distfair.cli``. Imports run one way (``tests/test_import_direction.py``)."""

__version__ = "0.1.0"
