#!/usr/bin/env bash
# An MLflow tracking server for distfair on a cluster: PostgreSQL as the backend store (runs,
# params, metrics, tags) and an artifact root the server proxies (checkpoints, plots, reports),
# so nodes need nothing but its URL: --tracking-uri http://THIS_HOST:5000.
#
# Every setting and credential comes from the environment; none is written in a file here or
# passed on the command line (where `ps` would show it):
#   PGHOST, PGPORT (5432), PGDATABASE (mlflow), PGUSER        the database (libpq's own variables)
#   PGPASSWORD, or a ~/.pgpass / PGPASSFILE line               read by libpq, not put in the URI
#   PGSSLMODE (e.g. require)                                   TLS to the database, when it is remote
#   MLFLOW_ARTIFACTS_DESTINATION  where artifacts go: s3://bucket/mlflow, gs://bucket/mlflow (with
#                                 the cloud's own credentials: AWS_*, GOOGLE_APPLICATION_CREDENTIALS
#                                 or the VM's role), or a path on this host's disk
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000)
#   MLFLOW_ALLOWED_HOSTS          the Host headers the server accepts (MLflow 3 rejects others):
#                                 the name or address the cluster's nodes use, e.g. mlflow.internal:5000
# Further `mlflow server` options pass through, e.g. `serve.sh --app-name basic-auth` (users and
# passwords, MLflow's auth app; nodes then need MLFLOW_TRACKING_USERNAME / _PASSWORD).
#
# Needs `pip install mlflow psycopg2-binary` (distfair's dev extra has both). Checked by
# tests/test_submit.py (a throwaway PostgreSQL, a run logged over HTTP).
set -euo pipefail

: "${PGHOST:?set PGHOST (the PostgreSQL host)}"
: "${PGUSER:?set PGUSER (the PostgreSQL role MLflow uses)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://..., gs://... or a path)}"
if [[ -z "${PGPASSWORD:-}" && ! -r "${PGPASSFILE:-$HOME/.pgpass}" ]]; then
    echo "serve.sh: set PGPASSWORD or give a ~/.pgpass (PGPASSFILE) line for $PGUSER@$PGHOST" >&2
    exit 2
fi
python -c 'import psycopg2' 2>/dev/null || { echo "serve.sh: pip install psycopg2-binary" >&2; exit 2; }

# No password in the URI: libpq (psycopg2) reads PGPASSWORD / ~/.pgpass / PGSSLMODE itself. The
# driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
backend="postgresql+psycopg2://${PGUSER}@${PGHOST}:${PGPORT:-5432}/${PGDATABASE:-mlflow}"
args=(--backend-store-uri "$backend" --serve-artifacts
      --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
      --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
exec mlflow server "${args[@]}" "$@"
