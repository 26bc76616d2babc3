"""``distfair run --resume``: the newest earlier attempt of each configuration, and the report
of one that already finished every seed (read back from MLflow, nothing trained)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distfair.config import flatten
from distfair.config.seeds import planned_seeds, seed_rule

from distfair import tracking
from distfair.experiment.errors import Refused
from distfair.experiment.outcome import RunReport
from distfair.experiment.provenance import config_hash
from distfair.metrics import aggregate_seed_metrics
from distfair.results.record import CONFIGURATION_RECORD_NAME


@dataclass
class EarlierAttempt:
    """The newest configuration run of a configuration (``tracking.latest_configuration_run``)
    and which of its seeds already have a FINISHED seed run."""
    run_id: str
    run_name: str
    status: str
    seeds: list[int]
    finished: list[int]
    #: adaptive seeds: why the attempt stopped adding seeds (None: it did not get there)
    stop_reason: str | None = None
    adaptive: bool = False

    @property
    def complete(self) -> bool:
        if self.adaptive:           # its rule stopped, and no seed failed (the parent would be FAILED)
            return self.status == "FINISHED" and self.stop_reason is not None
        return self.status == "FINISHED" and set(self.seeds) <= set(self.finished)


def find_earlier_attempt(cfg: dict, *, config_path: str, experiment: str, tracking_uri: str,
                         configuration: str | None = None) -> EarlierAttempt | None:
    """What ``distfair run --resume`` continues: the newest attempt of this configuration
    (same :func:`config_hash`, so a different ``--set`` is another configuration; same config
    file stem; same ``configurations:`` entry) in ``experiment``, or None when there is none.
    Reads only: never creates the store or the experiment. Raises LookupError when the
    experiment or the store does not exist, ValueError when the attempt ran other seeds
    (its statistics would mix two seed lists)."""
    experiment_id = tracking.find_experiment(tracking_uri, experiment)
    found = tracking.latest_configuration_run(tracking_uri, experiment_id, config_hash=config_hash(cfg),
                                              config_stem=Path(config_path).stem, configuration=configuration)
    if found is None:
        return None
    rule = seed_rule(cfg)
    _same_rule(rule, found)
    seeds = planned_seeds(cfg)
    if rule is None and found["seeds"] is not None and sorted(found["seeds"]) != sorted(seeds):
        earlier = ",".join(map(str, found["seeds"]))
        raise ValueError(f"the newest attempt (run {found['run_id']}) ran seeds {earlier}, not "
                         f"{','.join(map(str, seeds))}: resume it with --seeds {earlier}, or start a new "
                         "attempt without --resume")
    finished = sorted(s for s, (_, status) in
                      tracking.seed_run_states(tracking_uri, experiment_id, found["run_id"]).items()
                      if status == "FINISHED")
    if rule is not None:
        return EarlierAttempt(run_id=found["run_id"], run_name=found["run_name"], status=found["status"],
                              seeds=finished, finished=finished, stop_reason=found.get("stop_reason"), adaptive=True)
    return EarlierAttempt(run_id=found["run_id"], run_name=found["run_name"], status=found["status"],
                          seeds=found["seeds"] if found["seeds"] is not None else seeds, finished=finished)


def _rule_params(rule: dict) -> dict[str, str]:
    """An adaptive rule as its configuration run's ``seeds.*`` params read back (strings)."""
    return {k: str(v) for k, v in flatten({"seeds": rule}).items()}


def _same_rule(rule: dict | None, found: dict) -> None:
    """ValueError when the attempt's seeds were another kind (a list against an adaptive rule)
    or another adaptive rule: its params cannot change, and its seeds were chosen by that rule."""
    earlier = found.get("seed_rule")
    if rule is None and earlier is None:
        return
    if rule is None:
        raise ValueError(f"the newest attempt (run {found['run_id']}) ran adaptive seeds ({_shown(earlier)}); "
                         "resume it with the same `seeds:` rule, or start a new attempt without --resume")
    if earlier is None:
        raise ValueError(f"the newest attempt (run {found['run_id']}) ran a fixed seed list, not adaptive seeds: "
                         "resume it with its seeds, or start a new attempt without --resume")
    if earlier != _rule_params(rule):
        raise ValueError(f"the newest attempt (run {found['run_id']}) ran another adaptive rule ({_shown(earlier)}): "
                         "resume it with that rule, or start a new attempt without --resume")


def _shown(params: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def finished_configuration_report(cfg: dict, *, experiment: str, tracking_uri: str, parent_run_id: str,
                                  stop_reason: str | None = None) -> RunReport:
    """The report of a configuration run that already FINISHED every seed (an adaptive one: its
    rule stopped, ``stop_reason``), read back from MLflow (nothing trained, nothing written): the
    same statistics its summary logged."""
    from distfair.experiment.adaptive import stopping_summary

    experiment_id = tracking.find_experiment(tracking_uri, experiment)
    planned = planned_seeds(cfg)
    per_seed = {s: m for s, m in tracking.finished_seed_metrics(tracking_uri, experiment_id, parent_run_id).items()
                if s in planned}
    rule = seed_rule(cfg)
    return RunReport(experiment=experiment, experiment_id=experiment_id, parent_run_id=parent_run_id,
                     tracking_uri=tracking_uri, seeds=sorted(per_seed),
                     metrics=aggregate_seed_metrics([per_seed[s] for s in sorted(per_seed)]), errors={},
                     record=tracking.run_json_artifact(tracking_uri, parent_run_id, CONFIGURATION_RECORD_NAME),
                     stopping=None if rule is None else stopping_summary(rule, per_seed, reason=stop_reason,
                                                                         ran=len(per_seed), waves=None))


def earlier_attempts(configurations: list, *, config_path: str, tracking_uri: str,
                     experiment: str) -> dict[str | None, EarlierAttempt | None]:
    """``{configuration name: EarlierAttempt or None}``: the newest attempt of each
    configuration. Raises :class:`Refused` saying why there is nothing to resume (no earlier
    run of any configuration, no store or experiment, or an attempt that ran other seeds).
    Reads MLflow only."""
    missing = f"no earlier run of this configuration in experiment {experiment!r}"
    attempts = {}
    for name, cfg in configurations:
        where = "" if name is None else f"configurations.{name}: "
        try:
            attempts[name] = find_earlier_attempt(cfg, config_path=config_path, experiment=experiment,
                                                  tracking_uri=tracking_uri, configuration=name)
        except LookupError as err:        # no store or no such experiment: nothing to resume
            raise Refused(f"{config_path}: --resume: {missing} ({err})") from None
        except ValueError as err:
            raise Refused(f"{config_path}: --resume: {where}{err}") from None
    if not any(attempts.values()):
        raise Refused(f"{config_path}: --resume: {missing} ({tracking_uri}); run it without --resume")
    return attempts
