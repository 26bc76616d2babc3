"""argparse types and the options every command that runs on a Ray cluster shares."""
from __future__ import annotations

import argparse


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {text!r}")
    return seeds


def _positive(kind: type):
    """argparse type: a number of ``kind`` (int or float) >= 1 for int, > 0 for float."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return value
    return parse


_positive_int, _positive_float = _positive(int), _positive(float)


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return list(dict.fromkeys(names))


def destination(args: argparse.Namespace) -> dict:
    """The options :func:`add_cluster_args` added, as the experiment layer's ``Destination`` keywords."""
    from distfair.experiment.run_plan import DESTINATION_FIELDS

    return {name: getattr(args, name) for name in DESTINATION_FIELDS}


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment name (default: the config file's stem)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join ('auto' or host:port); default: start a local Ray instance")
    p.add_argument("--num-cpus", type=_positive_float, metavar="N",
                   help="logical CPUs of the local Ray instance (default: all cores); ignored with --address")
    p.add_argument("--storage-path", metavar="PATH",
                   help="Ray Train storage for checkpoints (default: ./distfair_runs; shared storage on multi-node clusters)")
    p.add_argument("--allow-local", action="store_true",
                   help="with --address: accept a tracking store or storage path on this node's own disk (a "
                        "single-node cluster, or a path you know every node shares); refused otherwise")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout; human-readable output goes to stderr")
