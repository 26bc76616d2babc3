"""Speaker-level intervals beside the report's speech columns (speech paper 003, §4.1 and §5).

A seed run of the speech study logs, for each group's AUC_acc / AUC_FPR and each parity, the
ends of a percentile interval from a bootstrap over the speakers of its test set
(``<family>_lo`` / ``<family>_hi``: ``distfair.results.names.bound_key``; computed by
``distfair.evaluation.summaries._cluster_bootstrap``). The report's cells are statistics over
seeds (training randomness); these intervals are over speakers (which speakers the groups
happen to hold), a different source of uncertainty, so they are listed beside the tables, not
merged into the cells: for every column that has them, per configuration, the mean over its
seeds of each end and the number of seeds that logged one (a seed whose group has a single
speaker logs none).
"""
from __future__ import annotations

from dataclasses import dataclass

from distfair.metrics import summarize
from distfair.report.tables import Tables
from distfair.results.names import bound_key

__all__ = ["SpeakerInterval", "speaker_interval_notes", "speaker_intervals"]


@dataclass(frozen=True)
class SpeakerInterval:
    column: str          # the table column (``fpr_parity/gender``)
    row: str             # the configuration's row key (C1, ...)
    lo: float            # mean over seeds of the seeds' lower ends
    hi: float            # mean over seeds of the seeds' upper ends
    n: int               # seeds with an interval

    def to_json(self) -> dict:
        return {"column": self.column, "row": self.row, "lo": self.lo, "hi": self.hi, "n": self.n}


def speaker_intervals(tables: Tables) -> list[SpeakerInterval]:
    """Every (column, row) whose seed runs logged a speaker-bootstrap interval of the column's metric."""
    out = []
    for col in tables.columns:
        lo_key, hi_key = bound_key(col.key, "lo"), bound_key(col.key, "hi")
        if lo_key is None:
            continue
        for row in tables.rows:
            pairs = [(s.metrics[lo_key], s.metrics[hi_key]) for s in row.configuration.seeds
                     if lo_key in s.metrics and hi_key in s.metrics]
            if pairs:
                lo, hi = summarize([p[0] for p in pairs]), summarize([p[1] for p in pairs])
                out.append(SpeakerInterval(col.name, row.key, lo["mean"], hi["mean"], len(pairs)))
    return out


def speaker_interval_notes(tables: Tables) -> list[str]:
    """One footnote per column with speaker-level intervals (none when the runs have none)."""
    by_column: dict[str, list[SpeakerInterval]] = {}
    for item in speaker_intervals(tables):
        by_column.setdefault(item.column, []).append(item)
    return [f"Speakers, {column}: percentile interval of a bootstrap over the test set's speakers, stratified by "
            f"group, per seed run; mean over seeds of each end: "
            + "; ".join(f"{i.row} [{i.lo:.3f}, {i.hi:.3f}] (n={i.n})" for i in items) + "."
            for column, items in by_column.items()]
