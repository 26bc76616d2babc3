"""Everything Ray: the only subpackage of distfair that imports it.

``ray_session`` connects (or starts a local instance), ``run_configuration`` trains the seeds
of one configuration on Ray Train worker groups laid out by ``plan_seed_groups``.
"""
from distfair.distributed.layout import InsufficientResources, concurrent_groups, plan_seed_groups
from distfair.distributed.runner import ConfigurationOutcome, run_configuration
from distfair.distributed.session import ray_session

__all__ = ["ConfigurationOutcome", "InsufficientResources", "concurrent_groups", "plan_seed_groups",
           "ray_session", "run_configuration"]
