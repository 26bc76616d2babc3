"""``distfair sweep FILE``: :func:`plan_sweep` checks everything before anything starts (the
file and its ``space``, the storage refusals, the attempt ``--resume`` continues, the reference
checkpoints) and raises :class:`~distfair.experiment.errors.Refused`; :func:`execute_sweep`
opens the Ray session and runs the sweep with its MLflow record (``distfair.experiment.sweep``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.experiment.errors import Refused, RunInterrupted
from distfair.experiment.run_plan import Destination


@dataclass
class SweepRequest(Destination):
    """What ``distfair sweep`` was asked: the file, its overrides, how much to search, and its
    :class:`~distfair.experiment.run_plan.Destination`."""
    config: str
    overrides: list[str] = field(default_factory=list)
    num_samples: int | None = None
    num_seeds: int | None = None
    max_concurrent: int | None = None
    resume: bool = False


@dataclass
class SweepPlan:
    """A checked request: the configuration, its search, the sweep's name (its attempt) and
    where it is recorded."""
    request: SweepRequest
    cfg: dict
    spec: object
    name: str
    tracking_uri: str
    experiment: str
    storage: str


def plan_sweep(request: SweepRequest) -> SweepPlan:
    """Load and check everything before anything starts; raises :class:`Refused` with the
    lines to print."""
    from distfair.config import ConfigError, read_document
    from distfair.config.overrides import _parsed_overrides

    try:
        # what reading refuses (not a regular file, over the size limits, an alias bomb, a --set
        # that does not parse) is refused at once, before the sweep's modules import PyTorch
        read_document(request.config)
        _parsed_overrides(request.config, request.overrides)
        from distfair.experiment.sweep import load_sweep

        cfg, spec = load_sweep(request.config, num_samples=request.num_samples, num_seeds=request.num_seeds,
                               max_concurrent=request.max_concurrent, overrides=request.overrides)
    except ConfigError as err:
        raise Refused(str(err)) from None

    from distfair import tracking
    from distfair.experiment.references import resolve_init_from, resolve_references
    from distfair.experiment.refusals import default_storage_path, refuse_storage
    from distfair.experiment.sweep import sweep_dir_name, sweep_identity

    uri = tracking.resolve_tracking_uri(request.tracking_uri)
    experiment = request.experiment or Path(request.config).stem
    storage = request.storage_path or default_storage_path()
    refuse_storage(request.config, address=request.address, allow_local=request.allow_local, tracking_uri=uri,
                   storage=storage)
    try:
        name = sweep_dir_name(sweep_identity(cfg, spec, request.config), storage, request.resume)
    except FileNotFoundError as err:          # --resume with nothing to resume: nothing started
        raise Refused(f"{request.config}: --resume: {err}") from None
    try:                                      # a missing or mismatched checkpoint: before any trial
        resolve_init_from(cfg, uri, storage)
        resolve_references(cfg, uri, storage)
    except (ValueError, FileNotFoundError) as err:
        raise Refused(f"{request.config}: {err}") from None
    return SweepPlan(request=request, cfg=cfg, spec=spec, name=name, tracking_uri=uri, experiment=experiment,
                     storage=storage)


def execute_sweep(plan: SweepPlan, *, log: Callable[[str], None]):
    """Run (or resume) the planned sweep in a Ray session; returns its
    :class:`~distfair.experiment.sweep_results.SweepReport`. Raises :class:`Refused` (the
    cluster cannot hold the scaling) and :class:`RunInterrupted` (the open runs were marked
    KILLED, again once Ray is down)."""
    from distfair.distributed import InsufficientResources, ray_session
    from distfair.distributed.session import session_log_path, sigterm_received
    from distfair.distributed.sweep import TRIAL_RESOURCE
    from distfair.experiment.sweep import close_interrupted_sweep, run_sweep

    request = plan.request
    log_file = session_log_path(plan.storage, f"sweep-{plan.name}")
    log(f"Ray, Tune and worker output: {log_file}")
    try:
        with ray_session(request.address, num_cpus=request.num_cpus, resources={TRIAL_RESOURCE: 1000},
                         log_file=log_file) as cluster:
            report = run_sweep(plan.cfg, plan.spec, name=plan.name, config_path=request.config,
                               experiment=plan.experiment, tracking_uri=plan.tracking_uri, storage_path=plan.storage,
                               resume=request.resume, cluster=cluster, log=log)
    except InsufficientResources as err:
        raise Refused(f"{request.config}: scaling: {err}") from None
    if report.interrupted:
        close_interrupted_sweep(report, plan.tracking_uri)       # again, now that Ray is down
        raise RunInterrupted(terminated=sigterm_received())
    return report
