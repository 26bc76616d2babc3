"""Ray cluster launcher configs (``ray up``; a mapping with ``provider:``): Ray's packaged JSON
schema (``ray/autoscaler/ray-schema.json``, found without importing Ray), distfair's rules
(worker resources, the head's ``distfair_trial``, token auth, Ray's ports kept inside the private
network, the pinned Ray in images, no literal credentials), then, when the schema is satisfied,
Ray's own ``prepare_config``/``validate_config`` (through ``distfair.distributed.launcher``, the
only place Ray is imported; Ray is never started)."""
from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path

from distfair.deploy.cloud import cloud_problems
from distfair.deploy.common import TRIAL_RESOURCE, _positive, _ray_version_problem, pinned_ray_version
from distfair.deploy.credentials import _literal_credentials_in_command, _token_file_problems
from distfair.deploy.problems import Problem, _close_matches, _describe, _one_line, key_path, schema_problems

#: Ray's ports that must stay inside the private network
RAY_PORTS = {8265: "dashboard", 6379: "GCS", 10001: "Ray client"}

#: provider keys Ray's providers read that ray-schema.json does not list (the schema leaves
#: ``provider`` open; distfair closes it per provider so that a typo is not silently ignored)
PROVIDER_EXTRA_KEYS = {
    "aws": {"aws_credentials", "key_pair"},          # ray/autoscaler/_private/aws/
    "gcp": set(),                                    # ray/autoscaler/_private/gcp/
    "local": {"coordinator_address", "external_head_ip"},   # ray/autoscaler/_private/local/
}

_COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")
_TOKEN_ON = re.compile(r"\bRAY_AUTH_MODE\s*=\s*[\"']?token\b")
_TOKEN_OFF = re.compile(r"\bRAY_AUTH_MODE\s*=\s*[\"']?disabled\b")


# ----------------------------------------------------------------------- Ray's packaged schema
def ray_package_dir() -> Path | None:
    """The installed ``ray`` package's folder, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def ray_schema() -> dict:
    """``ray/autoscaler/ray-schema.json`` of the installed Ray: the schema ``ray up`` validates
    cluster launcher configs against (``ray.autoscaler._private.util.validate_config``)."""
    base = ray_package_dir()
    if base is None:
        raise FileNotFoundError("Ray is not installed (pip install -e . installs the pinned ray[default])")
    return json.loads((base / "autoscaler" / "ray-schema.json").read_text())


# ---------------------------------------------------------------------------- distfair's rules
def _port_exposure(rule: dict) -> list[str]:
    """Ray ports an AWS ``IpPermissions`` rule opens beyond the private network, with to whom."""
    protocol = str(rule.get("IpProtocol", "")).lower()
    low, high = rule.get("FromPort"), rule.get("ToPort")
    all_ports = protocol in ("-1", "all") or low in (None, -1)
    if not all_ports and isinstance(low, int) and not isinstance(high, int):
        high = low
    ports = [p for p in RAY_PORTS
             if all_ports or (isinstance(low, int) and isinstance(high, int) and low <= p <= high)]
    if not ports:
        return []
    sources = [r.get("CidrIp") for r in rule.get("IpRanges") or [] if isinstance(r, dict)]
    sources += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or [] if isinstance(r, dict)]
    out = []
    for cidr in sources:
        if not isinstance(cidr, str):
            continue
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            out.append(f"{cidr!r} is not a CIDR range")
            continue
        if network.prefixlen == 0 or not network.is_private:
            where = "the whole internet" if network.prefixlen == 0 else "addresses outside the private network"
            names = ", ".join(f"{p} ({RAY_PORTS[p]})" for p in ports)
            out.append(f"opens port {names} to {cidr} ({where}): keep Ray's ports inside the private network "
                       f"(the VPC's CIDR) and reach the dashboard through an SSH tunnel (ray dashboard FILE)")
    return out



def _commands(doc: dict, key: str) -> list[tuple[list, str]]:
    value = doc.get(key)
    return [([key, i], c) for i, c in enumerate(value) if isinstance(c, str)] if isinstance(value, list) else []


def _head_start_resources(doc: dict) -> dict | None:
    """The ``--resources`` JSON of the head's ``ray start`` command, if any."""
    for _, command in _commands(doc, "head_start_ray_commands"):
        try:
            tokens = shlex.split(command)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            value = None
            if token.startswith("--resources="):
                value = token.split("=", 1)[1]
            elif token == "--resources" and i + 1 < len(tokens):
                value = tokens[i + 1]
            if value is not None:
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    return parsed
    return None



def launcher_rules(doc: dict) -> list[Problem]:
    """distfair's rules for a Ray cluster launcher config (parts of the wrong type are skipped:
    the schema reports those)."""
    problems: list[Problem] = []
    provider = doc.get("provider") if isinstance(doc.get("provider"), dict) else {}
    provider_type = provider.get("type")
    node_types = doc.get("available_node_types") if isinstance(doc.get("available_node_types"), dict) else {}
    head = doc.get("head_node_type")

    # provider: Ray's schema leaves it open; a typo there (use_internal_ip) is silently ignored
    if provider_type in PROVIDER_EXTRA_KEYS:
        try:
            known = set(ray_schema()["properties"]["provider"]["properties"]) | PROVIDER_EXTRA_KEYS[provider_type]
        except (FileNotFoundError, KeyError):
            known = set()
        for key in provider:
            if known and key not in known:
                problems.append((key_path(["provider", key]), f"unknown key for provider {provider_type}"
                                 + _close_matches(str(key), known)))

    # worker types declare their resources
    for name, spec in node_types.items():
        if name == head or not isinstance(spec, dict) or not isinstance(spec.get("resources"), dict):
            continue
        resources = spec["resources"]
        if not resources:
            problems.append((key_path(["available_node_types", name, "resources"]),
                             "a worker type without resources: declare what a node of it offers, e.g. "
                             "{CPU: 4, GPU: 1}, so that seed groups are placed on it"))
        elif "CPU" not in resources:
            problems.append((key_path(["available_node_types", name, "resources", "CPU"]),
                             "required: a worker type must say how many CPUs its Train workers may use"))

    # the head declares the trial drivers' resource
    if node_types and isinstance(head, str) and isinstance(node_types.get(head), dict):
        resources = node_types[head].get("resources")
        if isinstance(resources, dict) and not _positive(resources.get(TRIAL_RESOURCE)):
            problems.append((key_path(["available_node_types", head, "resources", TRIAL_RESOURCE]),
                             f"the head must declare the `{TRIAL_RESOURCE}` resource (e.g. {TRIAL_RESOURCE}: 1000) "
                             f"that each sweep configuration's driver takes; without it every driver holds 1% "
                             f"of a CPU"))
    elif not node_types and provider_type == "local":
        resources = _head_start_resources(doc) or {}
        if not _positive(resources.get(TRIAL_RESOURCE)):
            problems.append(("head_start_ray_commands",
                             f"the head's `ray start --head` must declare the `{TRIAL_RESOURCE}` resource "
                             f"(--resources='{{\"{TRIAL_RESOURCE}\": 1000}}') that each sweep configuration's "
                             f"driver takes"))

    # token auth on every node
    problems += _launcher_auth_problems(doc, node_types)

    # Ray's ports stay inside the private network
    group = provider.get("security_group")
    if isinstance(group, dict) and isinstance(group.get("IpPermissions"), list):
        for i, rule in enumerate(group["IpPermissions"]):
            if isinstance(rule, dict):
                for reason in _port_exposure(rule):
                    problems.append((key_path(["provider", "security_group", "IpPermissions", i]), reason))

    # cloud identities and network: scoped profiles / service accounts, IMDSv2, named security groups
    problems += cloud_problems(doc)

    # images carry the pinned Ray
    pinned = pinned_ray_version()
    images = []
    docker = doc.get("docker") if isinstance(doc.get("docker"), dict) else {}
    images += [(["docker", k], docker[k]) for k in ("image", "head_image", "worker_image")
               if isinstance(docker.get(k), str)]
    for name, spec in node_types.items():
        nd = spec.get("docker") if isinstance(spec, dict) and isinstance(spec.get("docker"), dict) else {}
        if isinstance(nd.get("worker_image"), str):
            images.append((["available_node_types", name, "docker", "worker_image"], nd["worker_image"]))
    for path, image in images:
        reason = _ray_version_problem(image, pinned)
        if reason:
            problems.append((key_path(path), reason))

    # no credential written into the file; the Ray token private and per cluster
    for key in _COMMAND_KEYS:
        for path, command in _commands(doc, key):
            for reason in _literal_credentials_in_command(command):
                problems.append((key_path(path), reason))
    problems += _token_file_problems(doc, _every_command(doc, node_types))
    return problems


def _every_command(doc: dict, node_types: dict) -> list[tuple[list, str]]:
    """Every command of a launcher config, the node types' own lists included, with its key path."""
    every = [(path, c) for key in _COMMAND_KEYS for path, c in _commands(doc, key)]
    for name, spec in node_types.items():
        if isinstance(spec, dict):
            for key in ("initialization_commands", "worker_setup_commands"):
                every += [(["available_node_types", name, key, i], c)
                          for i, c in enumerate(spec.get(key) or []) if isinstance(c, str)]
    return every


def _launcher_auth_problems(doc: dict, node_types: dict) -> list[Problem]:
    problems = []
    for path, command in _every_command(doc, node_types):
        if _TOKEN_OFF.search(command):
            problems.append((key_path(path), "RAY_AUTH_MODE=disabled turns Ray's token auth off: anyone who "
                                             "reaches the cluster's ports can run code on it"))
    common = [c for _, c in _commands(doc, "setup_commands")]
    sides = {"head_start_ray_commands": common + [c for _, c in _commands(doc, "head_setup_commands")],
             "worker_start_ray_commands": common + [c for _, c in _commands(doc, "worker_setup_commands")]}
    for key, setup in sides.items():
        commands = setup + [c for _, c in _commands(doc, key)]
        if not any(_TOKEN_ON.search(c) for c in commands):
            side = "head" if key.startswith("head") else "worker"
            problems.append((key, f"token auth is not on for the {side}'s `ray start`: export RAY_AUTH_MODE=token "
                                  f"(and RAY_AUTH_TOKEN_PATH, the token file) here or in setup_commands; Ray 2.60 "
                                  f"starts a cluster without auth otherwise "
                                  f"(ray/_private/authentication/authentication_token_setup.py)"))
    return problems


# ---------------------------------------------------------------------------- Ray's own checks
def ray_bootstrap_problems(doc: dict) -> list[Problem]:
    """What Ray's own ``prepare_config`` + ``validate_config`` (the first steps of ``ray up``,
    ray/autoscaler/_private/commands.py ``_bootstrap_config``) say about ``doc``
    (``distfair.distributed.launcher.ray_up_checks``: Ray is imported there only). Offline: the
    provider's bootstrap, which calls the cloud's API, is not run."""
    from jsonschema import ValidationError

    from distfair.distributed.launcher import ray_up_checks

    err = ray_up_checks(doc)
    if err is None:
        return []
    if isinstance(err, ValidationError):
        return [(key_path(path), f"{reason} (Ray's validate_config, after merging the provider's defaults)")
                for path, reason in _describe(err)]
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return [(_key_in_message(message, doc), f"{_one_line(message)} (Ray's prepare_config/validate_config, "
                                            f"as `ray up` runs them)")]


def _key_in_message(message: str, doc: dict) -> str:
    """The config key a message of Ray's is about: the first one it names (in backticks, or as a
    word) that is a top-level or ``provider`` key of Ray's schema."""
    try:
        properties = ray_schema()["properties"]
        known = list(properties) + [f"provider.{k}" for k in properties["provider"]["properties"]]
    except (FileNotFoundError, KeyError):
        known = list(doc)
    named = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", message) + re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)
    for name in named:
        for key in known:
            if key.split(".")[-1] == name:
                return key
    return "(config)"


def check_launcher(doc: dict) -> tuple[list[Problem], str]:
    try:
        schema = ray_schema()
    except (FileNotFoundError, OSError, json.JSONDecodeError) as err:
        return [("(ray)", f"cannot read Ray's cluster config schema: {err}")], ""
    problems = schema_problems(schema, doc)
    schema_ok = not problems
    problems += [p for p in launcher_rules(doc) if p not in problems]
    if schema_ok:                                # Ray would only repeat the first schema error
        problems += [p for p in ray_bootstrap_problems(doc) if p not in problems]
    provider = doc.get("provider", {}).get("type") if isinstance(doc.get("provider"), dict) else None
    return problems, (f"Ray cluster launcher config (provider {provider}): Ray {pinned_ray_version()}'s schema and "
                      f"prepare_config/validate_config, distfair's rules")
