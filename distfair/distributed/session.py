"""Connecting to Ray: an existing cluster (``--address``) or a local instance started and
stopped around the command."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

# Ray Train V2's controller polls its workers every 2 s by default; on the small jobs this tool
# runs that is most of the fixed cost of a fit (ray.md). Users can still override it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
                resources: dict[str, float] | None = None, quiet: bool = True) -> Iterator[dict]:
    """Yield the cluster's resources. Without ``address`` a local instance is started (with
    ``num_cpus`` logical CPUs if given) and shut down on exit; with one, this process joins
    that cluster as a driver and leaves it running. ``resources`` are extra logical
    resources of a local instance (ignored with ``address``)."""
    import logging

    if address:
        # Clusters made with `ray start` use token auth by default in Ray 2.60, and a driver
        # joining one must say so too (ray.md). Local instances keep Ray's own default: the
        # mode must not differ between a driver and the instance it starts.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    # The dashboard process serves Ray's State API, which Train V2's placement-group cleaner
    # polls; without it every run logs a warning every few seconds.
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO,
                  log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, **kwargs)
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
