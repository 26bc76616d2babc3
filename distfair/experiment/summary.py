"""The configuration run's own summary: the Markdown section that opens its MLflow description,
and which metrics it (and the seed-stability figure) shows."""
from __future__ import annotations

from typing import Mapping, Sequence

# the configuration run's headline metrics (MAIN_METRICS, then the MAIN_FAMILIES its evaluation
# has) are named in distfair.results.names, with every other metric name
from distfair.results.names import INTERVAL_NOTE, MAIN_FAMILIES, MAIN_METRICS, evaluation_label


#: at most this many metrics in the figure and the description's table
MAX_MAIN_METRICS = 12
SUMMARY_HEADING = "### Seed summary (distfair)"


def main_metrics(names: Sequence[str]) -> list[str]:
    """The metrics of :data:`MAIN_METRICS` then :data:`MAIN_FAMILIES` among ``names``, at most
    :data:`MAX_MAIN_METRICS`: what the seed-stability figure and the description show."""
    have = set(names)
    out = [m for m in MAIN_METRICS if m in have]
    for family in MAIN_FAMILIES:
        out += sorted(n for n in have if n == family or (family.endswith("/") and n.startswith(family)))
    return out[:MAX_MAIN_METRICS]


def stopping_line(stopping: Mapping) -> str:
    """One sentence on adaptive seeds: ``Adaptive seeds: max seeds after 4 seed(s) (min 2, max
    4); val_worst_class_acc 95% CI half-width 0.0123 over 4, target 1e-06``."""
    width = "n/a" if stopping.get("halfwidth") is None else f"{stopping['halfwidth']:.4f}"
    return (f"Adaptive seeds: {stopping.get('reason') or 'not stopped'} after {stopping['seeds_run']} seed(s) "
            f"(min {stopping['min']}, max {stopping['max']}); {stopping['metric']} 95% CI half-width {width} over "
            f"{stopping['n_seeds']}, target {stopping['target']:g}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cell(text: str, limit: int = 300) -> str:
    """One line of Markdown table or list text: no pipes or line breaks, at most ``limit`` chars."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def summary_markdown(summary: Mapping[str, dict], metrics: Sequence[str], *, seeds: Sequence[int],
                     planned: Sequence[int], errors: Mapping[int, str], figure: str | None,
                     primary: str | None = None, notice: str | None = None, stopping: Mapping | None = None) -> str:
    """The Markdown section that opens the configuration run's description (what the MLflow
    UI shows before its "Show more"): the heading, the dataset's ``notice`` (what every result
    on it must say), then straight away the main ``metrics`` as mean ± sample std, n seeds and
    the 95% interval (``distfair.metrics.summarize``: Student t, clipped to the metric's
    range), the primary evaluation attack's rows named with it (``robust_acc (pgd20)``,
    ``distfair.results.record.evaluation_label``); below the table how many seeds finished, the
    failed seeds with why, where the figure is and, for adaptive seeds (``stopping``,
    ``distfair.experiment.adaptive.stopping_summary``), why the seeds stopped. Its last line is
    always the same (the end of the section when it is replaced)."""
    lines = [SUMMARY_HEADING, ""]
    if notice:
        lines += [f"*{_cell(notice, 600)}*", ""]
    if metrics:
        lines += ["| metric | mean ± std | n | 95% CI |", "|---|---|---|---|"]
        for name in metrics:
            s = summary[name]
            spread = "" if s.get("std") is None else f" ± {_number(s['std'])}"
            interval = "n/a" if s.get("ci95_low") is None else f"[{_number(s['ci95_low'])}, {_number(s['ci95_high'])}]"
            label = evaluation_label(name, summary, primary)
            lines.append(f"| {_cell(label)} | {_number(s.get('mean'))}{spread} | {s.get('n', 0)} | {interval} |")
        lines.append("")
    lines += [f"{len(seeds)} of {len(planned)} seeds finished ({', '.join(map(str, seeds)) or 'none'}). "
              f"Mean ± sample std (ddof = 1) over the seeds; {INTERVAL_NOTE}.", ""]
    if stopping is not None:
        lines += [stopping_line(stopping) + " (tag `distfair.seeds.stop_reason`).", ""]
    if errors:
        lines.append(f"Failed seeds ({len(errors)}, metric `n_failed`; the statistics are over the finished seeds "
                     "only):")
        lines += [f"- seed {seed}: {_cell(why)}" for seed, why in sorted(errors.items())]
        lines.append("")
    if figure:
        lines.append(f"Figure: `{figure}` (Artifacts): every seed, the mean ± std and the 95% interval per metric.")
    lines.append("Every metric's statistics: `<metric>_mean`, `_std`, `_min`, `_max`, `_ci95_low`, `_ci95_high` "
                 "and `seed_summary.json`.")
    return "\n".join(lines)
