"""How the seeds of one configuration are spread over Ray Train worker groups.

Two forces pull apart (docs/ray-notes.md, "Seed layout"): on a cluster the seeds must run in parallel
(5 seeds on 5 GPUs take the time of one); on a small machine every ``TorchTrainer.fit()``
costs 7-10 s of start-up, so looping seeds inside one worker group wins. The layout serves
both: as many worker groups as the cluster can hold *at once* (so no group ever waits for
resources, which in Ray Train means retrying forever), each group running its share of the
seeds back to back. Pure Python: no Ray import, so it is unit-tested without a cluster.
"""
from __future__ import annotations

import math


class InsufficientResources(RuntimeError):
    """One seed run cannot be placed on this cluster: fail now instead of hanging."""


def worker_resources(scaling: dict) -> dict[str, float]:
    """Resources of one Train worker, as Ray will request them."""
    res = {k: float(v) for k, v in scaling["resources_per_worker"].items() if v}
    if scaling["use_gpu"]:
        res.setdefault("GPU", 1.0)
    else:
        res.pop("GPU", None)
    if not res:
        res = {"CPU": 1.0}
    return res


def concurrent_groups(scaling: dict, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None) -> int:
    """How many worker groups of ``scaling.num_workers`` workers fit in ``cluster`` at once.

    ``cluster`` is the total (``ray.cluster_resources()``), ``nodes`` each alive node's
    resources: a worker must fit on a single node. The Train controller itself asks for 0 CPU
    in Ray 2.60, and the per-group driver threads run in this process, so only workers count.
    """
    per_worker = worker_resources(scaling)
    where = f"{scaling['num_workers']} worker(s) x {per_worker}"
    if nodes is not None and not any(all(node.get(k, 0.0) >= v for k, v in per_worker.items()) for node in nodes):
        raise InsufficientResources(f"one seed run needs {where}, but no single node has {per_worker} "
                                    f"(nodes: {nodes}); lower scaling.resources_per_worker")
    capacity = math.inf
    for key, need in per_worker.items():
        capacity = min(capacity, math.floor(cluster.get(key, 0.0) / (need * scaling["num_workers"]) + 1e-9))
    if capacity < 1:
        raise InsufficientResources(f"one seed run needs {where}, the cluster has {cluster}; lower "
                                    f"scaling.num_workers or scaling.resources_per_worker, or add nodes")
    return int(capacity)


def plan_seed_groups(seeds: list[int], scaling: dict, cluster: dict[str, float],
                     nodes: list[dict[str, float]] | None = None) -> list[list[int]]:
    """Seeds dealt round-robin over ``min(#seeds, groups that fit, max_concurrent_seeds)`` groups."""
    if not seeds:
        raise ValueError("no seeds to run")
    n = min(len(seeds), concurrent_groups(scaling, cluster, nodes))
    if scaling.get("max_concurrent_seeds"):
        n = min(n, scaling["max_concurrent_seeds"])
    return [list(seeds[i::n]) for i in range(n)]
