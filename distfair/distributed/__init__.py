"""Everything Ray: the only subpackage of distfair that imports it.

``ray_session`` connects (or starts a local instance), ``SlotPool`` starts a command's worker
groups once (``distfair.distributed.slots``), and ``run_configuration`` puts the seeds of one
configuration on them and waits for their results.
"""
from distfair.distributed.layout import InsufficientResources, concurrent_groups, plan_seed_groups
from distfair.distributed.runner import ConfigurationOutcome, run_configuration
from distfair.distributed.session import ray_session
from distfair.distributed.slots import SlotPool

__all__ = ["ConfigurationOutcome", "InsufficientResources", "concurrent_groups", "plan_seed_groups",
           "SlotPool", "ray_session", "run_configuration"]
