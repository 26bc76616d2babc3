"""The orchestration under the command line: a file's configurations over seeds (``run_plan``,
``run``), a search over configurations (``sweep_plan``, ``sweep``), ``distfair report`` and
``distfair analyze`` (``reporting``, ``analysis``), each with its MLflow record. Returns report
objects and raises the exception types of ``errors``; prints nothing (``distfair.cli`` does)."""
