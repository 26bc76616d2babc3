"""Issue 28 §3: a tracking URI that carries a user or password is refused before anything starts
(exit 2, one line pointing to MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), and the secret is never
repeated, neither from ``--tracking-uri`` nor from ``$MLFLOW_TRACKING_URI``."""
from __future__ import annotations

import pytest

from distfair import cli
from distfair.tracking.uris import redact_uri, resolve_tracking_uri, uri_credentials_problem

SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize("uri", [f"http://alice:{SECRET}@mlflow.example:5000",
                                 f"https://alice:{SECRET}@mlflow.example/path?x=1",
                                 f"https://{SECRET}@mlflow.example"])
def test_a_uri_with_credentials_is_refused_without_repeating_them(uri):
    problem = uri_credentials_problem(uri, "--tracking-uri")
    assert problem is not None and SECRET not in problem and "alice" not in problem
    assert "MLFLOW_TRACKING_USERNAME" in problem and "MLFLOW_TRACKING_TOKEN" in problem
    with pytest.raises(ValueError) as err:
        resolve_tracking_uri(uri)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("uri", ["https://mlflow.example:5000", "http://127.0.0.1:5000", "sqlite:///m.db",
                                 "databricks", "file:///tmp/x"])
def test_uris_without_credentials_pass(uri):
    assert uri_credentials_problem(uri, "--tracking-uri") is None


def test_redaction_keeps_host_port_and_path():
    assert redact_uri(f"https://alice:{SECRET}@h.example:8443/a?b=1") == "https://***@h.example:8443/a?b=1"
    assert redact_uri("https://h.example/a") == "https://h.example/a"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_the_command_refuses_it_before_reading_the_file(command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cli.main([command, str(tmp_path / "missing.yaml"), "--tracking-uri", f"http://bob:{SECRET}@h:5000"])
    err = capsys.readouterr().err
    assert code == 2 and SECRET not in err and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: --tracking-uri: ")


def test_the_environment_variable_is_refused_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{SECRET}@h:5000")
    assert cli.main(["report", "--experiment", "x", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and err.startswith("error: MLFLOW_TRACKING_URI: ")
