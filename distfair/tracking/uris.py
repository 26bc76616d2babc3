"""Where the MLflow record is kept, and how to look at it (no MLflow here).

The tracking URI of a command (``--tracking-uri``, ``$MLFLOW_TRACKING_URI`` or a SQLite file in
the working directory), made absolute once in the driver, and the command or URL that opens an
experiment's runs table in the MLflow UI.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DB = "mlflow.db"
#: where a tracking server's credentials go instead of the URI (MLflow reads them itself)
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _with_userinfo(uri: str):
    """``uri`` split (``urllib.parse.SplitResult``) when it carries a user or password, else None."""
    if "://" not in uri:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    return None if parts.username is None and parts.password is None else parts


def uri_credentials_problem(uri: str, source: str) -> str | None:
    """Why ``uri`` (from ``source``: ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``) is refused,
    or None: a user or password in it would reach tags, logs, parked folders, a sweep's saved
    state and a Ray job's entrypoint (issue 28). The message never repeats the secret."""
    if _with_userinfo(uri) is None:
        return None
    return (f"{source}: the URI carries a user name or password ({redact_uri(uri)}); give the URI without them "
            f"and the credentials in {', '.join(CREDENTIAL_ENV[:2])} (or a token in {CREDENTIAL_ENV[2]})")


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` replaced by ``***@``."""
    parts = _with_userinfo(uri)
    if parts is None:
        return uri
    return parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[-1]}").geturl()


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """``uri`` or ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``, made absolute.

    Ray workers run in other working directories, so a relative SQLite or file path is
    resolved against the driver's working directory here, once. A URI with a user or password
    in it is refused (ValueError, :func:`uri_credentials_problem`).
    """
    source = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    problem = uri_credentials_problem(uri, source)
    if problem:
        raise ValueError(problem)
    cwd = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:          # a bare path means a file store
        return str((cwd / uri).resolve())
    return uri


#: MLflow 3's UI opens an experiment on its GenAI overview (traces, no runs table) whatever the
#: experiment's kind tag; ``workflowType=machine_learning`` on the runs page opens the runs table
#: with metric columns (checked in headless Chromium against MLflow 3.17.2,
#: tests/test_report.py::test_the_printed_mlflow_link_opens_the_runs_table)
UI_RUNS_PATH = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
#: where ``mlflow ui`` serves by default
LOCAL_UI = "http://127.0.0.1:5000"


def ui_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI served at ``base``."""
    return f"{base.rstrip('/')}/" + UI_RUNS_PATH.format(experiment_id=experiment_id)


def ui_command(uri: str, experiment_id: str) -> str:
    """How to look at the results: the command that serves a local store and the URL of the
    experiment's runs table (MLflow's own page for a tracking server)."""
    local = uri.startswith("sqlite:") or "://" not in uri or uri.startswith("file:")
    if local:
        return f"mlflow ui --backend-store-uri {uri}\n  then open {ui_url(LOCAL_UI, experiment_id)}"
    return f"open {ui_url(uri, experiment_id)}"
