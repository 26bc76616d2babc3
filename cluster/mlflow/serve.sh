#!/usr/bin/env bash
# An MLflow tracking server for distfair on a cluster: PostgreSQL as the backend store (runs,
# params, metrics, tags), an artifact root the server proxies (checkpoints, plots, reports), and
# MLflow's basic-auth app always on (users, passwords, per-experiment permissions). It listens on
# loopback; other machines reach it through a TLS reverse proxy (cluster/README.md), so nodes need
# nothing but its URL and an account: --tracking-uri https://mlflow.example.org with
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in their environment.
#
# Every setting and credential comes from the environment; none is written in a file here or
# passed on the command line (where `ps` would show it):
#   PGHOST, PGPORT (5432), PGDATABASE (mlflow), PGUSER        the database (libpq's own variables)
#   PGPASSWORD, or a ~/.pgpass / PGPASSFILE line               read by libpq, not put in the URI
#   PGSSLMODE (e.g. require)                                   TLS to the database, when it is remote
#   MLFLOW_ARTIFACTS_DESTINATION  where artifacts go: s3://bucket/mlflow, gs://bucket/mlflow (with
#                                 the cloud's own credentials: AWS_*, GOOGLE_APPLICATION_CREDENTIALS
#                                 or the VM's role), or a path on this host's disk
#   MLFLOW_AUTH_ADMIN_PASSWORD    the admin's password, at least 16 characters, never MLflow's old
#                                 default; MLflow sets it when it creates the admin (first start)
#   MLFLOW_AUTH_ADMIN_USERNAME    (admin)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  at least 32 characters (CSRF of the login pages; the same on
#                                 every server of one store), e.g. python3 -c 'import secrets;
#                                 print(secrets.token_hex(32))'
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what an account may do on experiments nobody granted it:
#                                 NO_PERMISSIONS (default) or READ; grants are per experiment
#                                 (cluster/mlflow/add_user.sh gives a team EDIT on its own)
#   MLFLOW_AUTH_DATABASE_URI      where users and grants are kept: by default the tables sit beside
#                                 the runs, in the same PostgreSQL database (no password in it)
#   MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000)
#   MLFLOW_ALLOWED_HOSTS          the Host headers the server accepts (MLflow 3 rejects others):
#                                 the name the proxy passes on, e.g. mlflow.example.org
# Further `mlflow server` options pass through (e.g. --workers 2), except --app-name: the login
# cannot be turned off here.
#
# Needs `pip install 'mlflow[auth]' psycopg2-binary` (distfair's dev extra has them). Checked by
# tests/test_tracking_auth.py and tests/test_submit.py (a throwaway PostgreSQL, runs logged over
# HTTP by an account, an anonymous client refused).
set -euo pipefail

refuse() { echo "serve.sh: $*" >&2; exit 2; }

[[ -n "${PGHOST:-}" ]] || refuse "set PGHOST (the PostgreSQL host)"
[[ -n "${PGUSER:-}" ]] || refuse "set PGUSER (the PostgreSQL role MLflow uses)"
[[ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ]] \
    || refuse "set MLFLOW_ARTIFACTS_DESTINATION (s3://..., gs://... or a path)"
if [[ -z "${PGPASSWORD:-}" && ! -r "${PGPASSFILE:-$HOME/.pgpass}" ]]; then
    refuse "set PGPASSWORD or give a ~/.pgpass (PGPASSFILE) line for $PGUSER@$PGHOST"
fi

# --- the login: refused before anything starts, one line each, exit 2
admin="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
[[ "$admin" =~ ^[A-Za-z0-9][A-Za-z0-9_.@-]*$ ]] \
    || refuse "MLFLOW_AUTH_ADMIN_USERNAME: letters, digits and _ . @ - only"
password="${MLFLOW_AUTH_ADMIN_PASSWORD:-}"
if [[ -z "$password" ]]; then
    refuse "set MLFLOW_AUTH_ADMIN_PASSWORD (the admin's password, at least 16 characters) in the environment"
elif [[ "$password" == "password1234" ]]; then
    refuse "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's old default password, known to everyone: choose another"
elif (( ${#password} < 16 )); then
    refuse "MLFLOW_AUTH_ADMIN_PASSWORD is shorter than 16 characters"
elif [[ "$password" == "$admin" ]]; then
    refuse "MLFLOW_AUTH_ADMIN_PASSWORD is the admin's user name"
fi
secret="${MLFLOW_FLASK_SERVER_SECRET_KEY:-}"
if [[ -z "$secret" ]]; then
    refuse "set MLFLOW_FLASK_SERVER_SECRET_KEY (at least 32 random characters) in the environment"
elif (( ${#secret} < 32 )); then
    refuse "MLFLOW_FLASK_SERVER_SECRET_KEY is shorter than 32 characters"
fi
default_permission="${MLFLOW_AUTH_DEFAULT_PERMISSION:-NO_PERMISSIONS}"
case "$default_permission" in
    NO_PERMISSIONS|READ) ;;
    *) refuse "MLFLOW_AUTH_DEFAULT_PERMISSION must be NO_PERMISSIONS or READ (grant EDIT per experiment)" ;;
esac
for opt in "$@"; do
    [[ "$opt" != --app-name* ]] || refuse "--app-name: the login is always on (basic-auth)"
done

python -c 'import psycopg2' 2>/dev/null || refuse "pip install psycopg2-binary"
python -c 'import flask_wtf' 2>/dev/null || refuse "pip install 'mlflow[auth]' (the login needs Flask-WTF)"

# No password in the URI: libpq (psycopg2) reads PGPASSWORD / ~/.pgpass / PGSSLMODE itself. The
# driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
backend="postgresql+psycopg2://${PGUSER}@${PGHOST}:${PGPORT:-5432}/${PGDATABASE:-mlflow}"
auth_db="${MLFLOW_AUTH_DATABASE_URI:-$backend}"
[[ "$auth_db" != *$'\n'* && "$auth_db" != *$'\r'* ]] || refuse "MLFLOW_AUTH_DATABASE_URI: one line"
if [[ "$auth_db" =~ ^[A-Za-z0-9+.-]+://[^/@]*:[^/@]*@ ]]; then
    refuse "MLFLOW_AUTH_DATABASE_URI carries a password: give it to libpq (PGPASSWORD, ~/.pgpass)"
fi

# MLflow's auth app reads its settings from an INI file (MLFLOW_AUTH_CONFIG_PATH). It holds no
# secret (MLflow reads the admin's password from the environment), yet it is private all the
# same: a folder of our own (mktemp, 0700), the file 0600, removed when the server stops.
old_umask="$(umask)"
umask 077
confdir="$(mktemp -d "${TMPDIR:-/tmp}/distfair-mlflow-auth.XXXXXXXX")"
trap 'rm -rf "$confdir"' EXIT
export MLFLOW_AUTH_CONFIG_PATH="$confdir/basic_auth.ini"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
default_permission = ${default_permission}
database_uri = ${auth_db//%/%%}
admin_username = ${admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
EOF
chmod 600 "$MLFLOW_AUTH_CONFIG_PATH"
umask "$old_umask"
export MLFLOW_AUTH_ADMIN_USERNAME="$admin"

host="${MLFLOW_HOST:-127.0.0.1}"
case "$host" in
    127.*|localhost|::1) ;;
    *) echo "serve.sh: listening on $host over plain HTTP: passwords cross the network in clear" \
            "unless only a TLS proxy on a private link reaches it (cluster/README.md)" >&2 ;;
esac
args=(--app-name basic-auth --backend-store-uri "$backend" --serve-artifacts
      --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
      --host "$host" --port "${MLFLOW_PORT:-5000}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
echo "serve.sh: login on (basic-auth, default permission $default_permission, admin $admin);" \
     "auth settings in $MLFLOW_AUTH_CONFIG_PATH" >&2

# Not exec'd, so that the settings file is removed when the server ends; SIGTERM/SIGINT/SIGHUP
# are passed on to the server.
mlflow server "${args[@]}" "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT HUP
status=0
wait "$server" || status=$?
# a passed-on signal ends the first wait before the server has stopped: wait for it to stop
if kill -0 "$server" 2>/dev/null; then
    status=0
    wait "$server" || status=$?
fi
exit "$status"
