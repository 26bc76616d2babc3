"""What ``distfair analyze`` prints and writes of a meta-analysis (:mod:`distfair.report.meta_analysis`):
the exclusions, the correlation table, ``correlations.csv``, ``analysis.json`` and one heatmap per
parity metric; where the runs logged training-set sizes, the §5.2.2 table (training-set size vs
AUC_FPR per configuration and attribute, :mod:`distfair.report.representation`) and
``representation.csv``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from distfair.report.meta_analysis import PARITY_METRICS, SIGNIFICANCE, Analysis
from distfair.report.representation import REPRESENTATION_METRICS, TRAIN_SIZE, across_configurations


def _fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def format_exclusions(analysis: Analysis) -> str:
    """The chance-level exclusion (its rule named) and every other exclusion, named."""
    if analysis.chance_rule == "binomial":
        rule = f"every seed run's clean accuracy not above 1/K: one-sided binomial test, p >= {analysis.alpha}"
    else:
        rule = "every seed run's clean accuracy not above the test set's majority-class rate"
    lines = [f"{analysis.n_found} configuration(s) found, {len(analysis.configurations)} analysed; "
             f"{analysis.n_excluded_chance} excluded at chance ({rule}; --chance-rule {analysis.chance_rule})"]
    by_run: dict[str, list[dict]] = {}
    for s in analysis.seed_runs_at_chance:
        by_run.setdefault(s["run_id"], []).append(s)
    for e in analysis.excluded:
        lines.append(f"  excluded ({e['reason']}): {e['name']} ({e['run_id']}): {e['detail']}")
        for s in by_run.pop(e["run_id"], []):
            lines.append(f"      seed {s['seed']}: {s['describe']}")
    for run_id, seeds in by_run.items():
        lines.append(f"  seed run(s) at chance left out of {seeds[0]['name']} ({run_id}): "
                     + "; ".join(f"seed {s['seed']}: {s['describe']}" for s in seeds))
    if analysis.seed_runs_untested:
        lines.append(f"  {len(analysis.seed_runs_untested)} seed run(s) could not be tested for chance and were "
                     f"KEPT (fallback: no clean confusion matrix to count correct, n and K):")
        lines += [f"    {s['name']} seed {s['seed']} ({s['seed_run_id']}): {s['reason']}"
                  for s in analysis.seed_runs_untested]
    return "\n".join(lines)


def format_table(analysis: Analysis) -> str:
    """One block per parity metric: a row per (attribute, intervention) with r, its 95% Fisher-z
    interval, p, Holm's p over the analysis (``*``: significant) and n, then the per-seed-set
    r's (descriptive); undefined correlations say why."""
    if not analysis.parity_metrics:
        return ("nothing to correlate: no analysed configuration recorded a parity metric ("
                + ", ".join(f"{m}/<attribute>" for m in PARITY_METRICS) + ")")
    lines = [f"95% interval: Fisher z over configurations; p (Holm): Holm's correction over the "
             f"{analysis.n_holm} defined correlation(s) of this analysis, * = p (Holm) < {SIGNIFICANCE} "
             f"(only these are significant); per seed set: mean r ± std over seed sets, descriptive only"]
    for family in analysis.parity_metrics:
        lines.append(f"\n{family}: {PARITY_METRICS[family]}; r > 0: the intervention goes with more disparity")
        if family in analysis.missing_metrics:
            lines.append("  not recorded by any analysed configuration")
            continue
        lines.append(f"  {'attribute':<12} {'intervention':<12} {'r':>7} {'95% interval':>17} {'p':>8} "
                     f"{'p (Holm)':>9}  {'n':>4}   per seed set: mean r ± std (sets)")
        for c in (c for c in analysis.correlations if c.parity == family):
            s = c.seed_sets
            spread = f"{_fmt(s['mean'])} ± {_fmt(s['std'])} ({s['n']})" if s["n"] else "—"
            if c.pearson.undefined:
                lines.append(f"  {c.attribute:<12} {c.intervention:<12} {'undefined':>7} {'':>17} {'':>8} "
                             f"{'':>9}  {c.pearson.n:>4}   {spread}   ({c.pearson.undefined})")
                continue
            interval = _interval(c.pearson)
            lines.append(f"  {c.attribute:<12} {c.intervention:<12} {c.pearson.r:>7.3f} {interval:>17} "
                         f"{c.pearson.p:>8.3g} {_fmt(c.p_holm, '.3g'):>9}{'*' if c.significant else ' '} "
                         f"{c.pearson.n:>4}   {spread}")
    return "\n".join(lines)


def _interval(pearson) -> str:
    """``[low, high]`` of a correlation's 95% interval, or a dash where it has none."""
    return f"[{pearson.ci95_low:.3f}, {pearson.ci95_high:.3f}]" if pearson.ci95_low is not None else "—"


def format_representation(analysis: Analysis) -> str:
    """§5.2.2: per (metric, attribute) a row per configuration with r over the groups, its 95%
    Fisher-z interval, p, Holm's p (the analysis's family), Spearman's rho and the groups, then
    the mean ± std of r over configurations; empty when no run logged training-set sizes."""
    if not analysis.representation:
        return ""
    lines = [f"Training-set size |X_train,s| ({TRAIN_SIZE}) vs the group's metric, over the groups of each "
             "attribute, per configuration (speech paper 003 §5.2.2); r > 0: better-represented groups have "
             "the larger value; p (Holm): in the same family as the table above"]
    spreads = across_configurations(analysis.representation)
    for key, spread in spreads.items():
        metric, attribute = key.split("/", 1)
        lines.append(f"\n{metric} ({REPRESENTATION_METRICS.get(metric, '')}), {attribute}: mean r over "
                     f"configurations {_fmt(spread['mean'])} ± {_fmt(spread['std'])} ({spread['n']})")
        lines.append(f"  {'configuration':<24} {'r':>7} {'95% interval':>17} {'p':>8} {'p (Holm)':>9}  {'n':>3} "
                     f"{'rho':>7}   groups (train n: value)")
        for c in (c for c in analysis.representation if (c.metric, c.attribute) == (metric, attribute)):
            groups = ", ".join(f"{g} ({v['train_n']:.0f}: {v['value']:.3g})" for g, v in c.groups.items())
            if c.pearson.undefined:
                lines.append(f"  {c.name:<24} {'undefined':>7} {'':>17} {'':>8} {'':>9}  {c.pearson.n:>3} {'':>7}   "
                             f"{groups}   ({c.pearson.undefined})")
                continue
            interval = _interval(c.pearson)
            lines.append(f"  {c.name:<24} {c.pearson.r:>7.3f} {interval:>17} {c.pearson.p:>8.3g} "
                         f"{_fmt(c.p_holm, '.3g'):>9}{'*' if c.significant else ' '} {c.pearson.n:>3} "
                         f"{_fmt(c.spearman_rho):>7}   {groups}")
    return "\n".join(lines)


REPRESENTATION_COLUMNS = ("metric", "attribute", "run_id", "name", "r", "ci95_low", "ci95_high", "p", "p_holm",
                          "significant", "n", "undefined", "spearman_rho", "spearman_p", "groups")

CSV_COLUMNS = ("parity", "attribute", "intervention", "kind", "r", "ci95_low", "ci95_high", "p", "p_holm",
               "significant", "n", "undefined", "seed_sets_n", "seed_r_mean", "seed_r_std", "seed_r_per_seed")


def write_outputs(analysis: Analysis, outdir: str | Path, *, title: str) -> dict[str, Path]:
    """``correlations.csv``, ``analysis.json`` and one heatmap per parity metric
    (``pearson_<metric>.png``: attributes x interventions, r as colour, paper Figs. 2-5) in
    ``outdir``. Returns ``{label: path}``."""
    from distfair.plotting import heatmap

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = {"csv": outdir / "correlations.csv", "json": outdir / "analysis.json"}
    with files["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for c in analysis.correlations:
            s = c.seed_sets
            per_seed = ";".join(f"{seed}:{'' if r is None else f'{r:.6g}'}" for seed, r in s["r"].items())
            writer.writerow([c.parity, c.attribute, c.intervention, analysis.interventions[c.intervention].kind,
                             c.pearson.r, c.pearson.ci95_low, c.pearson.ci95_high, c.pearson.p, c.p_holm,
                             c.significant if c.p_holm is not None else "", c.pearson.n, c.pearson.undefined or "",
                             s["n"], s["mean"], s["std"], per_seed])
    files["json"].write_text(json.dumps(analysis.to_json(), indent=1, allow_nan=False))
    if analysis.representation:
        files["representation_csv"] = outdir / "representation.csv"
        with files["representation_csv"].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(REPRESENTATION_COLUMNS)
            for c in analysis.representation:
                row = c.to_json()
                row["significant"] = c.significant if c.p_holm is not None else ""
                row["undefined"] = row["undefined"] or ""
                row["groups"] = ";".join(f"{g}:{v['train_n']:g}:{v['value']:.6g}" for g, v in c.groups.items())
                writer.writerow([row[k] for k in REPRESENTATION_COLUMNS])
    names = list(analysis.interventions)
    binary = sum(i.kind == "binary" for i in analysis.interventions.values())
    for family in analysis.parity_metrics:
        attrs = analysis.attributes[family]
        if not attrs:
            continue
        cells = {(c.attribute, c.intervention): c.pearson.r for c in analysis.correlations if c.parity == family}
        values = np.array([[np.nan if cells[(a, n)] is None else cells[(a, n)] for n in names] for a in attrs])
        n = max((c.pearson.n for c in analysis.correlations if c.parity == family), default=0)
        files[f"heatmap_{family}"] = heatmap(
            values, attrs, names, f"{title}\nPearson r: intervention vs {family} ({n} configurations)",
            outdir / f"pearson_{family}.png", vmin=-1.0, vmax=1.0, cmap="RdBu_r",
            cbar_label="Pearson r (> 0: more disparity)", xlabel="intervention", ylabel="attribute",
            column_split=binary if 0 < binary < len(names) else None)
    return files
