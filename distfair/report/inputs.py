"""The report's inputs: configuration runs, their FINISHED seed runs and the sweeps, as plain
values (``distfair.experiment.reporting`` reads them through ``distfair.tracking``)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping


# ------------------------------------------------------------------------------ inputs
@dataclass
class SeedInput:
    """One FINISHED seed run: its MLflow metrics (latest values) and, from its result
    record (or its ``per_class_acc.json`` / ``confusion_matrices.json``), per test evaluation
    its per-class accuracies, confusion counts and abstentions."""
    seed: int
    run_id: str
    metrics: dict[str, float]
    class_names: list[str] | None = None
    per_class_acc: dict[str, list] = field(default_factory=dict)
    confusion: dict[str, list] = field(default_factory=dict)
    abstained: dict[str, list] = field(default_factory=dict)


@dataclass
class ConfigurationInput:
    """One configuration run: its flat params and tags as MLflow holds them (strings), and
    its FINISHED seed runs."""
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    seeds: list[SeedInput]
    experiment: str = ""

    @property
    def evaluations(self) -> list[str]:
        """The ``eval.attacks`` entry names, in order (from the params)."""
        found = {}
        for key, value in self.params.items():
            m = re.fullmatch(r"eval\.attacks\.(\d+)\.name", key)
            if m:
                found[int(m.group(1))] = value
        return [found[i] for i in sorted(found)]


@dataclass
class SweepInput:
    """A sweep run: its objective targets (``[{metric, stat, mode, k}]``), the params of the
    configuration it chose (``best.*``, as strings) and its Pareto set (configuration run ids)."""
    run_id: str
    name: str
    objective: list[dict]
    best_params: dict[str, str] | None = None
    pareto_run_ids: list[str] | None = None


def seed_input(seed: int, run_id: str, metrics: Mapping[str, float], *, record: Mapping | None = None,
               per_class_acc: Mapping | None = None, confusion: Mapping | None = None) -> SeedInput:
    """A seed run's input from its result record (``result.json``: per-class accuracies,
    confusion matrices and abstentions of the test evaluations), or, for a seed run recorded
    before records existed, from its ``per_class_acc.json`` and ``confusion_matrices.json``."""
    if record is not None:
        abstentions = (record.get("abstentions") or {}).get("test") or {}
        return SeedInput(seed, run_id, dict(metrics), list(record.get("class_names") or []) or None,
                         dict((record.get("per_class_acc") or {}).get("test") or {}),
                         dict((record.get("confusion_matrices") or {}).get("test") or {}),
                         {e: v["abstained"] for e, v in abstentions.items()
                          if isinstance(v, dict) and "abstained" in v})
    names = (per_class_acc or {}).get("class_names") or (confusion or {}).get("class_names")
    return SeedInput(seed, run_id, dict(metrics), list(names) if names else None,
                     dict((per_class_acc or {}).get("per_class_acc") or {}),
                     dict((confusion or {}).get("matrices") or {}), dict((confusion or {}).get("abstained") or {}))
