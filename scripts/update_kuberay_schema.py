"""Regenerate the KubeRay schemas `distfair cluster validate` checks manifests against.

The schemas are the ``openAPIV3Schema`` of KubeRay's RayCluster and RayJob CustomResourceDefinitions
(``ray-operator/config/crd/bases/ray.io_rayclusters.yaml`` and ``ray.io_rayjobs.yaml`` in the
ray-project/kuberay repository, Apache License 2.0), reduced to their structure: every
``description`` is dropped (most of the files' size), everything else (types, properties,
required keys, enums, patterns, ``x-kubernetes-*`` markers) is kept as is. Validation needs no
network at run time: the reduced schemas ship in ``distfair/deploy/schemas/kuberay/``.

To update (e.g. to a new KubeRay release), with a checkout of that release:

    python scripts/update_kuberay_schema.py /path/to/kuberay --release v1.7.0

It writes ``raycluster.json`` and ``rayjob.json`` (the served ``v1`` version of each CRD) with
the release and the source files recorded in ``_source``, and prints their sizes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "distfair" / "deploy" / "schemas" / "kuberay"
CRDS = {"raycluster": "ray.io_rayclusters.yaml", "rayjob": "ray.io_rayjobs.yaml"}
BASES = Path("ray-operator") / "config" / "crd" / "bases"


def strip_descriptions(node):
    """The schema without any ``description`` key (recursively); a *property named*
    ``description`` (inside ``properties``) is kept."""
    if isinstance(node, dict):
        return {k: (strip_properties(v) if k == "properties" else strip_descriptions(v))
                for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def strip_properties(properties: dict) -> dict:
    return {name: strip_descriptions(schema) for name, schema in properties.items()}


def served_v1_schema(crd: dict, source: str) -> dict:
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1" and version.get("served", True):
            return version["schema"]["openAPIV3Schema"]
    raise SystemExit(f"{source}: no served v1 version in the CRD")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kuberay", type=Path, help="a checkout of ray-project/kuberay at the release to use")
    p.add_argument("--release", required=True, help="the release tag of that checkout, e.g. v1.7.0 (recorded)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, name in CRDS.items():
        path = args.kuberay / BASES / name
        crd = yaml.safe_load(path.read_text())
        schema = strip_descriptions(served_v1_schema(crd, str(path)))
        schema["_source"] = {"repository": "ray-project/kuberay", "release": args.release,
                             "file": str(BASES / name), "license": "Apache-2.0",
                             "reduced": "every description removed; structure unchanged",
                             "kind": crd["spec"]["names"]["kind"], "group": crd["spec"]["group"], "version": "v1"}
        target = OUT / f"{kind}.json"
        target.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size / 1024:.0f} KiB from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
