#!/usr/bin/env bash
# A team's account on the tracking server that cluster/mlflow/serve.sh runs: EDIT on the team's
# own experiments (log runs, metrics, tags and artifacts; no deleting, no granting), nothing on
# the others (the server's default permission), never admin. Run it as the admin:
#
#   export MLFLOW_TRACKING_URI=https://mlflow.example.org
#   export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=...     # the admin's
#   export MLFLOW_NEW_USER_PASSWORD=...                                    # the team's, >= 16 chars
#   cluster/mlflow/add_user.sh team-a team-a-digits team-a-cifar          # USER EXPERIMENT...
#
# The user is created if it does not exist (an existing one keeps its password); each experiment
# is created (by the admin, who keeps MANAGE on it) if it does not exist, and the user's grant on
# it becomes EDIT. The team then sets MLFLOW_TRACKING_USERNAME/_PASSWORD to its own account on the
# nodes (mlflow.env, the distfair-mlflow Secret) and runs with --experiment set to one of these.
# No password is taken on the command line. Exit 2 on a missing setting, 1 if the server refuses.
set -euo pipefail

refuse() { echo "add_user.sh: $*" >&2; exit 2; }

(( $# >= 2 )) || refuse "usage: add_user.sh USER EXPERIMENT [EXPERIMENT...] (as the admin; see the file's head)"
[[ -n "${MLFLOW_TRACKING_URI:-}" ]] || refuse "set MLFLOW_TRACKING_URI (the server, https://...)"
[[ -n "${MLFLOW_TRACKING_USERNAME:-}" && -n "${MLFLOW_TRACKING_PASSWORD:-}" ]] \
    || refuse "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's account"
[[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.@-]*$ ]] || refuse "USER: letters, digits and _ . @ - only"
[[ "$1" != "$MLFLOW_TRACKING_USERNAME" ]] || refuse "USER is the admin: give the team an account of its own"

exec python - "$@" <<'PY'
import os
import sys

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

user, experiments = sys.argv[1], sys.argv[2:]
uri = os.environ["MLFLOW_TRACKING_URI"]
auth = get_app_client("basic-auth", tracking_uri=uri)
client = MlflowClient(tracking_uri=uri)
try:
    try:
        found = auth.get_user(user)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        password = os.environ.get("MLFLOW_NEW_USER_PASSWORD", "")
        if len(password) < 16:
            print("add_user.sh: set MLFLOW_NEW_USER_PASSWORD (the new user's password, at least 16 "
                  "characters) in the environment", file=sys.stderr)
            sys.exit(2)
        found = auth.create_user(user, password)
        print(f"created user {user}")
    else:
        print(f"user {user} exists (its password is unchanged)")
    if found.is_admin:
        print(f"add_user.sh: {user} is an admin: a team's account must not be", file=sys.stderr)
        sys.exit(2)
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        try:
            auth.grant_user_permission(user, "experiment", experiment_id, "EDIT")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(user, "experiment", experiment_id)
            auth.grant_user_permission(user, "experiment", experiment_id, "EDIT")
        print(f"{user}: EDIT on experiment {name} (id {experiment_id})")
except MlflowException as e:
    print(f"add_user.sh: the server refused: {str(e).splitlines()[0][:300]}", file=sys.stderr)
    sys.exit(1)
PY
