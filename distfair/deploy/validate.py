"""``distfair cluster validate`` itself: the files to check (named, or every YAML under
``cluster/``), what each file is (told by its content: a launcher config, Kubernetes manifests,
or neither), the report lines and exit code, and the ``cluster`` subcommand's argparse parser."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distfair.deploy import gpu as cluster_gpu
from distfair.deploy.kuberay import check_kubernetes
from distfair.deploy.launcher import check_launcher
from distfair.deploy.problems import FileReport, Problem, key_path

EXIT_OK, EXIT_USAGE = 0, 2


# ---------------------------------------------------------------------------- files
def _non_finite_problems(documents: list) -> list[Problem]:
    """Every NaN or infinite number in the documents (YAML's ``.nan``, ``.inf``, ``1e999``)."""
    found = []

    def walk(node, path):
        if isinstance(node, float) and (node != node or abs(node) == float("inf")):
            found.append((key_path(path), f"must be a finite number, got {node}"))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + [key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, path + [i])

    for i, doc in enumerate(documents):
        walk(doc, [f"documents[{i}]"] if len(documents) > 1 else [])
    return found


def is_launcher(doc) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "apiVersion" not in doc and "kind" not in doc


def is_kubernetes(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def check_file(path: str | Path, *, skip_unrecognized: bool = False) -> FileReport:
    """Check one YAML file: a Ray cluster launcher config or Kubernetes manifests (KubeRay)."""
    from distfair.config.yaml_input import read_yaml_documents

    report = FileReport(str(path))
    # one line per problem: `line N: ...` for syntax, and binary files and duplicate keys refused
    documents, problem = read_yaml_documents(path, all_documents=True)
    if problem is not None:
        report.problems.append(problem)
        return report
    if not documents:
        report.problems.append(("(file)", "empty file"))
        return report
    non_finite = _non_finite_problems(documents) if any(is_launcher(d) or is_kubernetes(d) for d in documents) else []
    if non_finite:                          # the schemas accept .nan and .inf as numbers
        report.problems = non_finite
        return report
    if len(documents) == 1 and is_launcher(documents[0]):
        report.problems, report.summary = check_launcher(documents[0])
        report.warnings = [(key_path(p), reason) for p, reason in cluster_gpu.launcher_warnings(documents[0])]
        return report
    if not all(is_kubernetes(d) for d in documents):
        if skip_unrecognized and not any(is_kubernetes(d) or is_launcher(d) for d in documents):
            report.skipped = True
            report.summary = "skipped: neither a Ray cluster launcher config nor a Kubernetes manifest"
            return report
    summaries = []
    for i, doc in enumerate(documents):
        prefix = f"documents[{i}]." if len(documents) > 1 else ""
        if not is_kubernetes(doc):
            report.problems.append((f"documents[{i}]" if prefix else "(top level)",
                                    "neither a Ray cluster launcher config (a mapping with provider:) nor a "
                                    "Kubernetes manifest (apiVersion: and kind:)"))
            continue
        problems, summary = check_kubernetes(doc)
        report.problems += [(prefix + key, reason) for key, reason in problems]
        summaries.append(summary)
    report.summary = "; ".join(summaries)
    return report


def default_files() -> tuple[Path | None, list[Path]]:
    """The ``cluster/`` folder (here, else the checkout distfair runs from) and its YAML files."""
    # parents[2]: the checkout's root (this file is distfair/deploy/validate.py)
    for base in (Path.cwd() / "cluster", Path(__file__).resolve().parents[2] / "cluster"):
        if base.is_dir():
            files = sorted({*base.rglob("*.yaml"), *base.rglob("*.yml")})
            return base, files
    return None, []


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------ command
VALIDATE_DESCRIPTION = """\
Check Ray cluster definitions offline, without starting Ray or reaching a network:

- Ray cluster launcher configs (cluster/aws.yaml, gcp.yaml, onprem.yaml; `ray up FILE`) against the
  schema shipped in the installed Ray package (ray/autoscaler/ray-schema.json) and Ray's own
  prepare_config + validate_config, the checks `ray up` starts with;
- KubeRay manifests (cluster/kuberay/: RayCluster, RayJob) against KubeRay's CRD schema shipped in
  distfair/deploy/schemas/kuberay/, strictly: an unknown key is an error (Kubernetes would drop it silently);

and distfair's rules on both: every worker type declares resources, the head declares the
`distfair_trial` resource, Ray's token auth is on, the dashboard (8265), GCS (6379) and client (10001)
ports are never opened beyond the private network, AWS and GCP nodes have their own least-privilege
identities (instance profiles with IMDSv2, service accounts without cloud-platform on workers) and
named security groups or networks (Ray's defaults open SSH to 0.0.0.0/0), credentials come from
Secrets or files that are not in the repository, and images and rayVersion carry the Ray that distfair pins. Warnings, which
never change the exit code: a GPU node whose image carries an NVIDIA driver older than 580 (the pinned
CUDA 13 torch cannot use its GPU), distfair installed without requirements.lock.
"""

VALIDATE_EPILOG = """\
examples:
  distfair cluster validate                          # every *.yaml / *.yml under ./cluster
  distfair cluster validate cluster/aws.yaml my-cluster.yaml

output: one line per file that passes; otherwise one line per problem, `FILE: KEY.PATH: REASON`,
all of them at once; a warning is `FILE: KEY.PATH: warning: REASON` (on stderr, as problems are).

exit codes: 0 every file passes (warnings or not), 2 a problem in any file (or no file to check).
"""


def cmd_validate(args: argparse.Namespace) -> int:
    if args.files:
        targets, discovered = [Path(f) for f in args.files], False
    else:
        base, targets = default_files()
        discovered = True
        if base is None:
            print("error: no cluster/ folder here: name the files to check (distfair cluster validate FILE ...)",
                  file=sys.stderr)
            return EXIT_USAGE
        if not targets:
            print(f"error: no *.yaml or *.yml file under {_display(base)}", file=sys.stderr)
            return EXIT_USAGE
    failed = problems = 0
    for target in targets:
        report = check_file(target, skip_unrecognized=discovered)
        report.path = _display(target) if discovered else str(target)
        for line in report.lines():
            print(line, file=sys.stderr, flush=True)
        if report.problems:
            failed += 1
            problems += len(report.problems)
        else:
            print(f"{report.path}: {'' if report.skipped else 'ok: '}{report.summary}", flush=True)
    if failed:
        print(f"error: {problems} problem(s) in {failed} of {len(targets)} file(s)", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``cluster`` (with its ``validate`` subcommand) to a parser's subcommands; each
    subcommand sets ``handler``."""
    cluster = subparsers.add_parser(
        "cluster", help="check the Ray cluster definitions (launcher YAMLs, KubeRay manifests) offline",
        description="Ray cluster definitions for running distfair beyond one machine: cluster/aws.yaml, "
                    "cluster/gcp.yaml, cluster/onprem.yaml (`ray up FILE`) and cluster/kuberay/ (kubectl apply). "
                    "See cluster/README.md.")
    sub = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    sub.required = True
    validate = sub.add_parser(
        "validate", help="check launcher YAMLs and KubeRay manifests against Ray's and KubeRay's schemas and "
                         "distfair's rules",
        description=VALIDATE_DESCRIPTION, epilog=VALIDATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    validate.add_argument("files", nargs="*", metavar="FILE",
                          help="YAML files to check (default: every *.yaml and *.yml under ./cluster, or under the "
                               "checkout's cluster/ when there is none here)")
    validate.set_defaults(handler=cmd_validate)
    return cluster
