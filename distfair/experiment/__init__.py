"""One configuration over seeds (``run``) and a search over configurations (``sweep``), with their MLflow record."""
