"""The credential scan of ``distfair cluster validate``: no credential written literally into a
cluster definition (a ``PASSWORD=...`` or a URI with a password in a launcher command, a
Kubernetes env ``value`` instead of ``valueFrom.secretKeyRef``, a RayJob's ``runtimeEnvYAML``
``env_vars``), and a launcher config's Ray token kept per cluster and private: no command
writes a token file without ``umask 077`` or ``chmod 600``, and the folder ``file_mounts``
copies the token from names the cluster (one token per cluster, not one for every cluster
launched from the same machine)."""
from __future__ import annotations

import re

from distfair.deploy.problems import Problem, _one_line, key_path

#: an environment variable name that holds a credential (not a path to one)
_CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
_NOT_A_CREDENTIAL = re.compile(r"(_PATH|_FILE|_DIR|_MODE)$", re.I)
#: ``NAME=value`` in a shell command, the value not taken from another variable or command
_SHELL_ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(?![\"']?[$`])([\"']?)([^\s;&|\"'`]+)")
#: a password inside a URI: scheme://user:password@host
_URI_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)
#: a shell command that writes a Ray token file: ``ray get-auth-token --generate`` (it writes
#: ~/.ray/auth_token with the default umask, usually 0644), or a redirect, ``tee`` or ``cp``
#: into a file whose name says token
_TOKEN_WRITE = re.compile(r"get-auth-token\b[^;&|\n]*--generate"
                          r"|(?:>{1,2}|\btee\b(?:\s+-a)?|\bcp\b[^;&|\n]*?)\s*[\"']?[^\s;&|\"']*token", re.I)
#: what keeps a new file private: ``umask 077`` (0077, u=rwx,g=,o=) or ``chmod 600``/``400``/``go-rwx``
_MODE_RESTRICTED = re.compile(r"\bumask\s+(?:0{0,2}77\b|u=rwx?,g=,o=)|\bchmod\s+(?:-\w+\s+)?(?:0?[46]00\b|"
                              r"(?:go|og)-rwx|u=rw?,go=)")
#: ``RAY_AUTH_TOKEN_PATH=...`` in a command: where the nodes read the token
_TOKEN_PATH = re.compile(r"\bRAY_AUTH_TOKEN_PATH\s*=\s*[\"']?([^\s;&|\"']+)")
#: where Ray reads the token when RAY_AUTH_TOKEN_PATH is not set (ray/_private/authentication/
#: authentication_token_setup.py ``_get_default_token_path``)
RAY_DEFAULT_TOKEN = "~/.ray/auth_token"


def _credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.search(name)) and not _NOT_A_CREDENTIAL.search(name)


def _literal_credentials_in_command(command: str) -> list[str]:
    """Reasons for each credential a shell command writes literally."""
    found = []
    for match in _SHELL_ASSIGNMENT.finditer(command):
        name = match.group(1)
        if _credential_name(name):
            found.append(f"{name} is written literally: keep credentials out of the file (put them in a file "
                         f"that file_mounts copies, e.g. ~/.distfair-cluster/mlflow.env, and source it)")
    if _URI_PASSWORD.search(command):
        found.append("a URI with a password written literally: keep credentials out of the file")
    return found


def _env_problems(doc) -> list[Problem]:
    """Every Kubernetes ``env`` entry in ``doc`` that writes a credential literally."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "env" and isinstance(value, list):
                    for i, entry in enumerate(value):
                        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("value"):
                            literal = str(entry["value"])
                            what = (f"{entry['name']} is a credential" if _credential_name(entry["name"]) else
                                    f"{entry['name']} holds a password in its URI" if _URI_PASSWORD.search(literal)
                                    else None)
                            if what:
                                found.append((key_path(path + [key, i, "value"]),
                                              f"{what} written literally: take it from a Secret "
                                              f"(valueFrom.secretKeyRef)"))
                walk(value, path + [key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, path + [i])

    walk(doc, [])
    return found


def _runtime_env_problems(text: str) -> list[Problem]:
    from distfair.config.yaml_input import parse_yaml_text

    runtime_env, problem = parse_yaml_text(text)        # the limits of a file: no alias bomb inside the file
    if problem is not None:
        where, reason = problem
        return [("spec.runtimeEnvYAML", _one_line(reason if where == "(file)" else f"{where}: {reason}"))]
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    found = []
    if isinstance(env_vars, dict):
        for name, value in env_vars.items():
            if value and (_credential_name(str(name)) or _URI_PASSWORD.search(str(value))):
                found.append((f"spec.runtimeEnvYAML.env_vars.{name}",
                              "a credential written literally: give the Ray pods the variable from a Secret "
                              "(env valueFrom.secretKeyRef) instead"))
    return found


def _home(path: str) -> str:
    """``$HOME/x`` and ``${HOME}/x`` as ``~/x``, without a trailing ``/``."""
    return re.sub(r"^(?:\$HOME|\$\{HOME\})(?=/|$)", "~", path.strip()).rstrip("/") or "/"


def _token_file_problems(doc: dict, commands: list[tuple[list, str]]) -> list[Problem]:
    """A launcher config's Ray token: private and per cluster. ``commands`` are every command
    of the config as (key path, command)."""
    found = []
    for path, command in commands:
        if _TOKEN_WRITE.search(command) and not _MODE_RESTRICTED.search(command):
            found.append((key_path(path), "writes a Ray token file without restricting its mode: anyone on the "
                                          "node could read it (the default umask makes it 0644); write it under "
                                          "`umask 077` or `chmod 600` it in the same command"))
    tokens = {_home(p) for _, c in commands for p in _TOKEN_PATH.findall(c)} | {RAY_DEFAULT_TOKEN}
    cluster = str(doc.get("cluster_name") or "default")           # Ray's default cluster name
    mounts = doc.get("file_mounts") if isinstance(doc.get("file_mounts"), dict) else {}
    for remote, local in mounts.items():
        if not isinstance(remote, str) or not isinstance(local, str):
            continue
        carried = [t for t in sorted(tokens) if t == _home(remote) or t.startswith(_home(remote) + "/")]
        if carried and cluster not in _home(local).split("/"):
            found.append((key_path(["file_mounts", remote]),
                          f"the Ray token {carried[0]} comes from {local}, a folder that does not name this cluster: "
                          f"every cluster launched from this machine would share one token. Keep one per cluster, "
                          f"e.g. {_home(local)}/{cluster}, written under umask 077 (cluster/README.md)"))
    return found
