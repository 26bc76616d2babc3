"""KubeRay manifests (``apiVersion: ray.io/v1``, ``kind: RayCluster`` or ``RayJob``): the
``openAPIV3Schema`` of KubeRay's CRDs shipped in ``distfair/deploy/schemas/kuberay/``, made
strict (unknown keys are errors; ``metadata`` checked against Kubernetes' ObjectMeta), a few of
the KubeRay operator's own checks and distfair's rules; other Kubernetes objects get their name
and credentials checked."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from distfair.deploy.common import TRIAL_RESOURCE, _positive, _ray_version_problem, pinned_ray_version
from distfair.deploy.credentials import _env_problems, _runtime_env_problems
from distfair.deploy.problems import Problem, _show, close_object_schemas, key_path, schema_problems

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "kuberay"
KUBERAY_SCHEMAS = {"RayCluster": "raycluster.json", "RayJob": "rayjob.json"}
KUBERAY_API_VERSION = "ray.io/v1"
#: KubeRay's name limits (ray-operator/controllers/ray/utils/constant.go)
KUBERAY_NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}
#: token auth needs Ray >= 2.52 (KubeRay's validation.go)
KUBERAY_TOKEN_MIN_RAY = (2, 52, 0)

#: Kubernetes ObjectMeta (k8s.io/apimachinery/pkg/apis/meta/v1): a CRD schema leaves the
#: object's own ``metadata`` to the API server (``type: object``); these are its fields.
OBJECT_META_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        # set by the API server; present in manifests exported from a cluster
        "uid": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]}, "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"}, "managedFields": {"type": "array"},
        "selfLink": {"type": "string"},
    },
}

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------- the shipped CRD schemas
@lru_cache(maxsize=None)
def kuberay_schema(kind: str) -> tuple[dict, dict]:
    """(strict schema, ``_source`` record) of a KubeRay kind, from ``distfair/deploy/schemas/kuberay/``."""
    path = SCHEMA_DIR / KUBERAY_SCHEMAS[kind]
    raw = json.loads(path.read_text())
    source = raw.pop("_source", {})
    schema = close_object_schemas(raw)
    schema.setdefault("properties", {})["metadata"] = OBJECT_META_SCHEMA
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema, source


# ------------------------------------------------------------------- RayCluster / RayJob rules
def _cluster_spec(doc: dict, kind: str) -> tuple[list, dict]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if kind == "RayJob":
        inner = spec.get("rayClusterSpec")
        return ["spec", "rayClusterSpec"], inner if isinstance(inner, dict) else {}
    return ["spec"], spec


def _pod_containers(template) -> list[tuple[list, dict]]:
    spec = template.get("spec") if isinstance(template, dict) and isinstance(template.get("spec"), dict) else {}
    out = []
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if isinstance(items, list):
            out += [([key, i], c) for i, c in enumerate(items) if isinstance(c, dict)]
    return out


def _dig(node, *keys):
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _version_tuple(text) -> tuple[int, ...] | None:
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(g) for g in match.groups()) if match else None


def kuberay_rules(doc: dict, kind: str) -> list[Problem]:
    """distfair's rules and a few of the KubeRay operator's own checks, for RayCluster/RayJob."""
    problems: list[Problem] = []
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = metadata.get("name")
    if isinstance(name, str):
        limit = KUBERAY_NAME_LIMITS[kind]
        if not _DNS1035.match(name) or len(name) > limit:
            problems.append(("metadata.name", f"{name!r} must be a DNS-1035 label (lower-case letters, digits, "
                                              f"'-', starting with a letter) of at most {limit} characters"))
    elif "generateName" not in metadata:
        problems.append(("metadata.name", "required key missing"))

    if kind == "RayJob":
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        if spec and not isinstance(spec.get("rayClusterSpec"), dict) and not spec.get("clusterSelector"):
            problems.append(("spec.rayClusterSpec", "one of rayClusterSpec or clusterSelector must be set"))
        if isinstance(spec.get("runtimeEnvYAML"), str):
            problems += _runtime_env_problems(spec["runtimeEnvYAML"])
        if spec and not isinstance(spec.get("activeDeadlineSeconds"), int):
            problems.append(("spec.activeDeadlineSeconds", "required: a deadline (e.g. 86400) so a hung job "
                                                           "cannot hold the cluster forever"))
    prefix, cluster = _cluster_spec(doc, kind)
    if not cluster:
        return problems

    # token auth
    mode = _dig(cluster, "authOptions", "mode")
    if mode != "token":
        problems.append((key_path(prefix + ["authOptions", "mode"]),
                         "token auth is not on: set authOptions.mode: token (KubeRay then generates the token "
                         "Secret and gives it to every Ray container)" if mode is None else
                         f"is {mode!r}: set it to token; without auth anyone who reaches the cluster's ports can "
                         f"run code on it"))
    version = cluster.get("rayVersion")
    pinned = pinned_ray_version()
    if version is None:
        problems.append((key_path(prefix + ["rayVersion"]),
                         f"required: the Ray version of the image ({pinned or 'the pinned one'}); token auth "
                         f"needs >= 2.52"))
    elif mode == "token" and (_version_tuple(version) or (0,)) < KUBERAY_TOKEN_MIN_RAY:
        problems.append((key_path(prefix + ["rayVersion"]), f"{version!r}: token auth needs Ray >= 2.52.0"))
    elif pinned and str(version) != pinned:
        problems.append((key_path(prefix + ["rayVersion"]), f"{version!r}, but distfair pins ray {pinned} "
                                                            f"(pyproject.toml)"))

    head = cluster.get("headGroupSpec") if isinstance(cluster.get("headGroupSpec"), dict) else {}
    head_path = prefix + ["headGroupSpec"]
    # the head's service stays inside the cluster network
    service_type = head.get("serviceType")
    if service_type in ("NodePort", "LoadBalancer"):
        problems.append((key_path(head_path + ["serviceType"]),
                         f"{service_type} exposes the dashboard (8265), GCS (6379) and client (10001) ports outside "
                         f"the cluster network: use ClusterIP and `kubectl port-forward`"))
    head_service_type = _dig(head, "headService", "spec", "type")
    if head_service_type in ("NodePort", "LoadBalancer"):
        problems.append((key_path(head_path + ["headService", "spec", "type"]),
                         f"{head_service_type} exposes Ray's ports outside the cluster network: use ClusterIP"))
    if head.get("enableIngress") is True:
        problems.append((key_path(head_path + ["enableIngress"]),
                         "an Ingress exposes the dashboard outside the cluster network: use `kubectl port-forward`"))
    # the trial drivers' resource on the head
    group_resources = head.get("resources") if isinstance(head.get("resources"), dict) else {}
    start_params = head.get("rayStartParams") if isinstance(head.get("rayStartParams"), dict) else {}
    if (not _positive(group_resources.get(TRIAL_RESOURCE))
            and TRIAL_RESOURCE not in str(start_params.get("resources", ""))):
        problems.append((key_path(head_path + ["resources", TRIAL_RESOURCE]),
                         f"the head group must declare the `{TRIAL_RESOURCE}` resource (resources: "
                         f"{{{TRIAL_RESOURCE}: \"1000\"}}) that each sweep configuration's driver takes"))

    groups = [(head_path, head, "head")]
    workers = cluster.get("workerGroupSpecs")
    if isinstance(workers, list):
        groups += [(prefix + ["workerGroupSpecs", i], g, "worker") for i, g in enumerate(workers)
                   if isinstance(g, dict)]
    for path, group, role in groups:
        params = group.get("rayStartParams") if isinstance(group.get("rayStartParams"), dict) else {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            problems.append((key_path(path + ["resources"]), "resources are set both here and in rayStartParams "
                                                             "(num-cpus/num-gpus/memory/resources): use one"))
        containers = _dig(group, "template", "spec", "containers")
        if isinstance(containers, list) and not containers:
            problems.append((key_path(path + ["template", "spec", "containers"]), "needs at least one container"))
        pod_sc = _dig(group, "template", "spec", "securityContext")
        pod_non_root = isinstance(pod_sc, dict) and pod_sc.get("runAsNonRoot") is True
        for cpath, container in _pod_containers(group.get("template")):
            sc = container.get("securityContext") if isinstance(container.get("securityContext"), dict) else {}
            sc_path = path + ["template", "spec"] + cpath + ["securityContext"]
            if not (pod_non_root or sc.get("runAsNonRoot") is True):
                problems.append((key_path(sc_path + ["runAsNonRoot"]), "must be true (here or in the pod's "
                                                                       "securityContext): no root pods"))
            if sc.get("privileged") is True:
                problems.append((key_path(sc_path + ["privileged"]), "privileged containers are refused"))
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append((key_path(sc_path + ["allowPrivilegeEscalation"]), "must be false"))
            image = container.get("image")
            reason = _ray_version_problem(image, pinned) if isinstance(image, str) else None
            if reason:
                problems.append((key_path(path + ["template", "spec"] + cpath + ["image"]), reason))
        if role == "worker":
            low, high = group.get("minReplicas"), group.get("maxReplicas")
            if isinstance(low, int) and isinstance(high, int) and low > high:
                problems.append((key_path(path + ["minReplicas"]), f"{low} is greater than maxReplicas {high}"))
            ray_container = (containers[0] if isinstance(containers, list) and containers
                             and isinstance(containers[0], dict) else None)
            if ray_container is not None:
                limits = _dig(ray_container, "resources", "limits")
                cpath = path + ["template", "spec", "containers", 0, "resources", "limits"]
                if not isinstance(limits, dict) or not limits:
                    problems.append((key_path(cpath), "a worker group without resources: set the Ray container's "
                                                      "resources.limits (cpu, memory, nvidia.com/gpu for GPU workers); "
                                                      "KubeRay tells Ray what a pod offers from them"))
                else:
                    for needed in ("cpu", "memory"):
                        if needed not in limits:
                            problems.append((key_path(cpath + [needed]), "required for a worker group's Ray container"))
    problems += _env_problems(doc)
    return problems


# -------------------------------------------------------------------------------- one manifest
def check_kubernetes(doc: dict) -> tuple[list[Problem], str]:
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind in KUBERAY_SCHEMAS:
        try:
            schema, source = kuberay_schema(kind)
        except FileNotFoundError:
            return [("(schema)", f"{SCHEMA_DIR / KUBERAY_SCHEMAS[kind]} is missing: regenerate it with "
                                 f"scripts/update_kuberay_schema.py (cluster/README.md)")], ""
        problems = []
        if api != KUBERAY_API_VERSION:
            problems.append(("apiVersion", f"{kind} must be {KUBERAY_API_VERSION} (the version the shipped schema "
                                           f"describes), got {_show(api)}"))
        problems += schema_problems(schema, doc)
        problems += [p for p in kuberay_rules(doc, kind) if p not in problems]
        release = source.get("release", "unknown release")
        return problems, f"{kind}: KubeRay {release} CRD schema (strict), distfair's rules"
    problems = []
    if not isinstance(_dig(doc, "metadata", "name"), str) and not _dig(doc, "metadata", "generateName"):
        problems.append(("metadata.name", "required key missing"))
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        problems.append(("data" if doc.get("data") else "stringData",
                         "credentials in a manifest: create the Secret with `kubectl create secret generic ... "
                         "--from-literal=...` (or your secret manager), never from a file in the repository"))
    problems += _env_problems(doc)
    return problems, f"{kind} ({api}): no schema shipped for it; name and credentials checked"
