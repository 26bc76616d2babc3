"""What one configuration run produced (:class:`RunReport`), and the Ctrl-C that stopped one
(:class:`Interrupted`)."""
from __future__ import annotations

from dataclasses import dataclass

from distfair import tracking
from distfair.results.names import RUN_REPORT_FIELDS


@dataclass
class RunReport:
    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    seeds: list[int]
    metrics: dict[str, dict]          # name -> summarize() over the finished seeds
    errors: dict[int, str]
    record: dict | None = None        # the configuration's result record (configuration_result.json)
    #: adaptive seeds (``distfair.experiment.adaptive.stopping_summary``): why it stopped, after how
    #: many seeds, and the final half-width; None for a fixed seed list
    stopping: dict | None = None

    def to_json(self) -> dict:
        keep = RUN_REPORT_FIELDS
        out = {"experiment": self.experiment, "parent_run_id": self.parent_run_id, "seeds": self.seeds,
               "metrics": {k: {s: v[s] for s in keep} for k, v in self.metrics.items()}}
        if self.stopping is not None:
            out["stopping"] = dict(self.stopping)
        return out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its open MLflow runs were marked KILLED.

    A Ray worker that was just starting a seed can still reopen its run between that marking
    and Ray's shutdown; the caller calls ``close_again()`` once Ray has shut down (no worker
    left to write) so every run ends closed."""

    def __init__(self, tracking_uri: str, run_ids: list[str]):
        super().__init__()
        self.tracking_uri, self.run_ids = tracking_uri, run_ids

    def close_again(self) -> None:
        tracking.mark_runs(self.tracking_uri, self.run_ids, "KILLED")
