"""``distfair run FILE``: a file's configurations (one, or its ``configurations:`` block), one
after another in one Ray session, each over the same seeds.

:func:`plan_run` does everything that can refuse before anything starts (the file and its
overrides, the seeds, the storage refusals, ``--resume``'s earlier attempts, the reference
checkpoints) and raises :class:`~distfair.experiment.errors.Refused`; :func:`execute_run`
opens the Ray session (none when every configuration already finished) and runs each
configuration with its MLflow record (``distfair.experiment.run``). MLflow, Ray and torch are
imported only once the file is valid: a bad file is refused without them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distfair.experiment.errors import Refused, RunAborted, RunInterrupted


@dataclass(kw_only=True)
class Destination:
    """Where a training command records (experiment, tracking store, Ray Train storage) and on
    which Ray cluster it runs: the options ``distfair run`` and ``distfair sweep`` share."""
    experiment: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    num_cpus: float | None = None
    storage_path: str | None = None
    allow_local: bool = False


#: the fields of :class:`Destination`, as the command line's option names say them
DESTINATION_FIELDS = tuple(Destination.__dataclass_fields__)


@dataclass
class RunRequest(Destination):
    """What ``distfair run`` was asked: the file, its overrides and seeds, and its
    :class:`Destination`."""
    config: str
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    num_seeds: int | None = None
    resume: bool = False


@dataclass
class RunPlan:
    """A checked request: its configurations ``(name or None, cfg)``, where they are recorded,
    the earlier attempts (``--resume``) and each configuration's resolved reference files."""
    request: RunRequest
    configurations: list[tuple[str | None, dict]]
    tracking_uri: str
    experiment: str
    storage: str
    attempts: dict
    resolved: list[tuple[str | None, dict, dict, dict]]     # (name, cfg, init paths, references)

    @property
    def done(self) -> set:
        """The configurations an earlier attempt already finished (nothing to train)."""
        return {name for name, attempt in self.attempts.items() if attempt is not None and attempt.complete}


@dataclass
class RunFileReport:
    """Every configuration's report, in order: ``(name or None, cfg, RunReport)``."""
    plan: RunPlan
    reports: list[tuple[str | None, dict, object]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether a seed of some configuration failed (the others are still recorded)."""
        return any(report.errors for *_, report in self.reports)

    def to_json(self) -> dict:
        """The single configuration's report, or ``{"configurations": {name: report}}``."""
        if self.plan.configurations[0][0] is None:
            return self.reports[0][2].to_json()
        return {"configurations": {name: report.to_json() for name, _, report in self.reports}}


#: ``on_report(name, cfg, report, label, final)``: one configuration's report is ready
OnReport = Callable[[object, dict, object, str, bool], None]


def plan_run(request: RunRequest) -> RunPlan:
    """Load and check everything before anything starts; raises :class:`Refused` with the
    lines to print."""
    from distfair.config import ConfigError, load_configurations

    try:
        configurations = load_configurations(request.config, request.overrides)
    except ConfigError as err:
        raise Refused(str(err)) from None
    for _, cfg in configurations:
        if request.seeds is not None:
            cfg["seeds"] = request.seeds
        elif request.num_seeds is not None:
            cfg["seeds"] = list(range(request.num_seeds))

    from distfair import tracking
    from distfair.experiment.references import resolve_init_from, resolve_references
    from distfair.experiment.refusals import default_storage_path, refuse_storage
    from distfair.experiment.resume import earlier_attempts

    uri = tracking.resolve_tracking_uri(request.tracking_uri)
    experiment = request.experiment or Path(request.config).stem
    storage = request.storage_path or default_storage_path()
    refuse_storage(request.config, address=request.address, allow_local=request.allow_local, tracking_uri=uri,
                   storage=storage)
    attempts = (earlier_attempts(configurations, config_path=request.config, tracking_uri=uri, experiment=experiment)
                if request.resume else {})
    resolved = []
    for name, cfg in configurations:
        try:
            resolved.append((name, cfg, resolve_init_from(cfg, uri, storage), resolve_references(cfg, uri, storage)))
        except (ValueError, FileNotFoundError) as err:
            raise Refused(f"{request.config}: {'' if name is None else f'configurations.{name}: '}{err}") from None
    return RunPlan(request=request, configurations=configurations, tracking_uri=uri, experiment=experiment,
                   storage=storage, attempts=attempts, resolved=resolved)


def execute_run(plan: RunPlan, *, log: Callable[[str], None], on_report: OnReport) -> RunFileReport:
    """Run every configuration of ``plan`` in one Ray session, calling ``on_report`` as each
    one's report is ready. Raises :class:`Refused` (the cluster cannot hold the scaling:
    nothing trained), :class:`RunAborted` (the tracking server stayed away: the open runs are
    parked on disk; or the storage failed mid-run: the runs were marked FAILED) and
    :class:`RunInterrupted` (Ctrl-C: the runs were marked KILLED, again once Ray is down)."""
    from distfair import tracking
    from distfair.distributed import InsufficientResources, ray_session
    from distfair.distributed.session import sigterm_received
    from distfair.distributed.session import session_log_path
    from distfair.experiment.outcome import Interrupted
    from distfair.experiment.provenance import config_hash
    from distfair.experiment.resume import finished_configuration_report
    from distfair.experiment.run import run_configuration_with_tracking

    request, uri, storage, attempts = plan.request, plan.tracking_uri, plan.storage, plan.attempts
    tracking.forget_open_runs(uri)              # only this command's runs are parked if the server goes
    outcome = RunFileReport(plan=plan)
    reports = outcome.reports
    resolved = plan.resolved
    if len(resolved) > 1:
        log(f"{len(resolved)} configurations: {', '.join(name for name, *_ in resolved)}")
    done = plan.done
    train = len(done) < len(resolved)           # --resume of finished configurations: no Ray at all
    log_file = None
    if train:
        log_file = session_log_path(storage, f"run-{Path(request.config).stem}")
        log(f"Ray, Tune and worker output: {log_file}")
    try:
        with (ray_session(request.address, num_cpus=request.num_cpus, log_file=log_file) if train
              else contextlib.nullcontext(None)) as resources:
            if resources is not None:
                log(f"Ray: {'joined ' + request.address if request.address else 'local instance'} with "
                    f"{ {k: v for k, v in resources.items() if k in ('CPU', 'GPU')} }")
            slots = _CommandSlots(storage, log, [(cfg, name) for name, cfg, *_ in resolved if name not in done])
            for name, cfg, init_paths, references in resolved:
                label = "" if name is None else f"[{name}] "
                attempt = attempts.get(name)
                if name in done:
                    log(f"{label}already finished: parent run {attempt.run_id} ({attempt.run_name!r}) has a "
                        f"FINISHED run for every seed {attempt.seeds}"
                        + (f" and stopped adding seeds ({attempt.stop_reason})" if attempt.adaptive else "")
                        + "; nothing to train")
                    report = finished_configuration_report(cfg, experiment=plan.experiment, tracking_uri=uri,
                                                           parent_run_id=attempt.run_id,
                                                           stop_reason=attempt.stop_reason)
                    reports.append((name, cfg, report))
                    on_report(name, cfg, report, label, len(reports) == len(resolved))
                    continue
                if request.resume:
                    log(f"{label}resuming parent run {attempt.run_id} ({attempt.run_name!r}, {attempt.status}): "
                        f"seeds {attempt.finished} finished, the others are redone" if attempt is not None else
                        f"{label}no earlier run of this configuration: starting it")
                log(f"{label}{cfg['defense']['name']} on {cfg['dataset']['name']} with {cfg['model']['name']}, "
                    f"seeds {_seeds_text(cfg['seeds'])}, {cfg['train']['epochs']} epoch(s)")
                named = {} if name is None else {
                    "parent_run_name": f"{Path(request.config).stem}-{name}-{config_hash(cfg)[:8]}",
                    "extra_tags": {"distfair.configuration": name}}
                report = run_configuration_with_tracking(
                    cfg, config_path=request.config, experiment=plan.experiment, tracking_uri=uri,
                    storage_path=storage, log=log, init_paths=init_paths, references=references,
                    resume_parent=attempt.run_id if attempt is not None else None,
                    pool=slots.for_configuration(cfg), **named)
                reports.append((name, cfg, report))
                on_report(name, cfg, report, label, len(reports) == len(resolved))
            slots.close()
    except InsufficientResources as err:
        raise Refused(f"{request.config}: scaling: {err}") from None
    except tracking.TrackingUnavailable as err:
        # Ray is down now: no worker writes any more; what is not logged waits on disk
        raise RunAborted(tracking.park_open_runs(uri, storage, str(err))) from None
    except OSError as err:
        # the storage filled up or went away mid-run (the log file and Ray Train's checkpoints
        # live there); the runs were marked FAILED on the way out (run_configuration_with_tracking)
        raise RunAborted(f"{request.config}: storage path {storage}: {err.strerror or err} while the run was going "
                         "on; its MLflow runs were marked FAILED") from None
    except KeyboardInterrupt as err:
        if isinstance(err, Interrupted):
            err.close_again()            # Ray is down now: no worker can reopen a run
        raise RunInterrupted([str(n) for n, *_ in reports], terminated=sigterm_received()) from None
    return outcome


def _seeds_text(seeds) -> str:
    """A seed list as it is, an adaptive rule as ``0, 1, ... in waves, 3 to 20 until ...``."""
    if not isinstance(seeds, dict):
        return str(seeds)
    until = seeds["until"]
    return (f"0, 1, ... in waves of {seeds['wave'] or 'one per worker group'}, {seeds['min']} to {seeds['max']} "
            f"until the 95% CI half-width of {until['metric']} is <= {until['ci95_halfwidth']:g}")


class _CommandSlots:
    """The worker groups of one ``distfair run`` (``distfair.distributed.slots``): started for
    the first configuration to train and kept for every later one with the same scaling (a
    different scaling closes them and starts its own). As many as the cluster holds at once,
    and no more than the seeds left to train with that scaling."""

    def __init__(self, storage: str, log: Callable[[str], None], todo: list[tuple[dict, str | None]]):
        self.storage, self.log, self.todo = storage, log, todo
        self.pool = None
        self.key = None

    def for_configuration(self, cfg: dict):
        from distfair.config.seeds import planned_seeds
        from distfair.distributed.slots import SlotPool, scaling_key

        key = scaling_key(cfg["scaling"])
        if self.pool is not None and key != self.key:
            self.close()
        if self.pool is None:
            seeds = sum(len(planned_seeds(c)) for c, _ in self.todo if scaling_key(c["scaling"]) == key)
            self.pool, self.key = SlotPool(cfg["scaling"], storage_path=self.storage, log=self.log,
                                           slots=max(1, seeds)), key
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
