"""The report's files: ``report.html`` (self-contained: every figure embedded as a base64
PNG, inline CSS, no script, opens offline), ``report.md`` (the same tables as Markdown, the
figures linked from ``figures/``), ``tables.csv`` (tidy: one line per cell and per
comparison) and ``tables.json`` (everything, with every seed's value)."""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from distfair.report.charts import Figure
from distfair.report.speakers import speaker_interval_notes, speaker_intervals
from distfair.report.stats import LOW_EVIDENCE_N, POWER
from distfair.report.tables import ComparisonRow, Row, Tables

HTML_NAME, MD_NAME, CSV_NAME, JSON_NAME = "report.html", "report.md", "tables.csv", "tables.json"
FIGURES_DIR = "figures"
CHOSEN, PARETO = "†", "‡"

METHODS = f"""\
Cells are mean ± sample std (ddof = 1) over the configuration's FINISHED seed runs, with the
number of seeds n in parentheses (and, with --ci, the 95% Student-t interval of the mean).
Comparisons use Welch's unequal-variance t-test (Welch 1947; scipy.stats.ttest_ind with
equal_var=False), and when both configurations ran the same seeds also the paired t-test
(scipy.stats.ttest_rel) and the Wilcoxon signed-rank test (Wilcoxon 1945; scipy.stats.wilcoxon,
exact for small n: with n ≤ 5 pairs its two-sided p is never below 0.0625). Effect sizes are
Cohen's d on the pooled sample std (Cohen 1988) and Hedges' g, d times the exact small-sample
factor J (Hedges 1981). The p-values of all comparisons in the table form one family, corrected
with Holm's step-down procedure (Holm 1979; statsmodels multipletests, method "holm"). A cell is
in bold only when it is the best of its column (by mean, in the metric's direction) and its
comparison survives the correction. "Seeds needed" is the number of seeds per configuration a
two-sided two-sample t-test at α = 0.05 would need to detect the observed |d| with {POWER:.0%}
power (statsmodels TTestIndPower.solve_power); the observed d is itself uncertain with few seeds,
so it is a planning number, not evidence. Comparisons with n ≤ {LOW_EVIDENCE_N} seeds in either
configuration are flagged as low evidence."""


@dataclass
class Report:
    """Everything a report shows: the tables, the figures (drawn under ``figures/``) and
    what it covers."""
    title: str
    scope: dict
    tables: Tables
    figures: list[Figure]
    created: str
    tracking_uri: str
    notices: list[str] = field(default_factory=list)
    show_ci: bool = False
    distfair_version: str = ""

    def to_json(self) -> dict:
        return {"title": self.title, "scope": self.scope, "created": self.created, "tracking_uri": self.tracking_uri,
                "distfair_version": self.distfair_version, "notices": self.notices, **self.tables.to_json(),
                "speaker_intervals": [i.to_json() for i in speaker_intervals(self.tables)],
                "figures": [f.to_json() | {"path": f"{FIGURES_DIR}/{f.name}"} for f in self.figures]}


# ------------------------------------------------------------------------------ numbers
def _num(v, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def _p(p) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def cell_text(cell, show_ci: bool) -> str:
    """``mean ± std (n)`` (``mean (1)`` for one seed, ``—`` for none), with ``[low, high]``."""
    if not cell.n:
        return "—"
    text = f"{_num(cell.mean)} ({cell.n})" if cell.std is None else f"{_num(cell.mean)} ± {_num(cell.std)} ({cell.n})"
    if show_ci and cell.ci95_low is not None:
        text += f" [{_num(cell.ci95_low)}, {_num(cell.ci95_high)}]"
    return text


def _marks(row: Row) -> str:
    out = ""
    if row.chosen_by:
        out += " " + CHOSEN
    if row.pareto_of:
        out += PARETO if out else " " + PARETO
    if row.baseline:
        out += " (baseline)"
    return out


def _direction(col) -> str:
    return {"max": "↑", "min": "↓"}.get(col.direction, "")


def _comparison_cells(c: ComparisonRow, tables: Tables) -> list[str]:
    r = c.result
    diff = _num(r.diff, "+.3f")
    if r.diff_ci95_low is not None:
        diff += f" [{_num(r.diff_ci95_low, '+.3f')}, {_num(r.diff_ci95_high, '+.3f')}]"
    needed = "—" if r.seeds_needed is None else (f">{r.seeds_needed - 1}" if r.seeds_needed > 10_000
                                                 else str(r.seeds_needed))
    evidence = f"low (n ≤ {LOW_EVIDENCE_N})" if r.low_evidence else ""
    if r.undefined:
        evidence = (evidence + "; " if evidence else "") + r.undefined
    return [c.row, c.reference, c.column, f"{r.n} vs {r.n_reference}", diff, _num(r.cohens_d, "+.2f"),
            _num(r.hedges_g, "+.2f"), f"{_p(r.p)} ({r.test})" if r.p is not None else "—", _p(r.p_holm),
            "yes" if r.significant else "no", _p(r.paired_p) if r.paired else "seeds differ",
            _p(r.wilcoxon_p) if r.paired else "seeds differ", _num(r.power, ".2f"), needed, evidence]


COMPARISON_HEADER = ["row", "vs", "column", "n", "Δ mean [95% CI]", "Cohen's d", "Hedges' g", "p", "p (Holm)",
                     "significant", "paired t p", "Wilcoxon p", "power", f"seeds needed ({POWER:.0%})", "evidence"]


def _summary(tables: Tables, show_ci: bool) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    header = ["key", "configuration"] + [f"{c.name} {_direction(c)}".rstrip() for c in tables.columns]
    body = []
    for row in tables.rows:
        cells = [(row.key, False), (row.label + _marks(row), False)]
        cells += [(cell_text(row.cells[c.name], show_ci), row.cells[c.name].best) for c in tables.columns]
        body.append(cells)
    return header, body


def _seeds_needed_matrix(tables: Tables) -> tuple[list[str], list[list[str]]] | None:
    if not tables.comparisons:
        return None
    names = [c.name for c in tables.columns if any(x.column == c.name for x in tables.comparisons)]
    header = ["row", "vs"] + names
    by = {(c.row, c.reference, c.column): c.result.seeds_needed for c in tables.comparisons}
    pairs = list(dict.fromkeys((c.row, c.reference) for c in tables.comparisons))
    body = []
    for row, ref in pairs:
        cells = []
        for name in names:
            if (row, ref, name) not in by:
                cells.append("")
                continue
            n = by[(row, ref, name)]
            cells.append("—" if n is None else (">10000" if n > 10_000 else str(n)))
        body.append([row, ref, *cells])
    return header, body


def _footnotes(tables: Tables) -> list[str]:
    notes = []
    if tables.mode == "baseline":
        notes.append(f"Comparisons: every configuration against the baseline {tables.baseline} "
                     f"({tables.row(tables.baseline).label}).")
    else:
        notes.append("Comparisons (no --baseline): each column's best configuration against every other one.")
    notes.append(f"Bold: best in its column (↑ higher is better, ↓ lower) and significant after Holm's correction "
                 f"across the {sum(c.result.p is not None for c in tables.comparisons)} comparison(s) of this report "
                 f"(α = {tables.alpha}).")
    sweeps = {s.run_id: s for s in tables.sweeps}
    for row in tables.rows:
        for sweep_id in row.chosen_by:
            notes.append(f"{CHOSEN} {row.key}: chosen on validation metrics by sweep {sweeps[sweep_id].name} "
                         f"({sweep_id}); its test numbers are reported here, never used to choose.")
    if any(r.pareto_of for r in tables.rows):
        notes.append(f"{PARETO} in the Pareto set of its (multi-objective) sweep, judged on validation metrics.")
    if tables.rows and max(max((c.n for c in r.cells.values()), default=0) for r in tables.rows) <= LOW_EVIDENCE_N:
        notes.append(f"Every configuration has ≤ {LOW_EVIDENCE_N} seeds: every comparison is low evidence.")
    notes += tables.hidden
    notes += speaker_interval_notes(tables)
    return notes


# ------------------------------------------------------------------------------ Markdown
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    for cells in body:
        texts = [(f"**{c[0]}**" if c[1] and c[0] != "—" else _md_escape(c[0])) if isinstance(c, tuple)
                 else _md_escape(c) for c in cells]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def markdown_tables(report: Report) -> str:
    """The summary table and its footnotes (also the report run's MLflow description)."""
    header, body = _summary(report.tables, report.show_ci)
    return _md_table(header, body) + "\n\n" + "\n".join(f"- {n}" for n in _footnotes(report.tables))


def render_markdown(report: Report) -> str:
    t = report.tables
    parts = [f"# {report.title}", "", _scope_line(report), ""]
    parts += [f"> {n}" for n in report.notices] + ([""] if report.notices else [])
    parts += ["## Results", "", markdown_tables(report), ""]
    if t.comparisons:
        parts += ["## Comparisons", "", _md_table(COMPARISON_HEADER, [_comparison_cells(c, t) for c in t.comparisons]),
                  ""]
        matrix = _seeds_needed_matrix(t)
        if matrix:
            parts += [f"## Seeds needed ({POWER:.0%} power, α = 0.05, two-sample t-test)", "",
                      _md_table(*matrix), ""]
    parts += ["## Configurations", "", _md_table(*_configurations_table(report)), ""]
    if report.figures:
        parts += ["## Figures", ""]
        for f in report.figures:
            parts += [f"### {f.title}", "", f"![{f.title}]({FIGURES_DIR}/{f.name})", "", f.caption, ""]
    parts += ["## Methods", "", METHODS, ""]
    return "\n".join(parts)


def _scope_line(report: Report) -> str:
    return (f"{report.scope.get('description', '')}; tracking URI {report.tracking_uri}; created "
            f"{report.created} by distfair {report.distfair_version}.")


def _configurations_table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["key", "configuration", "run id", "run name", "status", "seeds"]
    return header, [[r.key, r.label + _marks(r), r.run_id, r.name, r.status,
                     ", ".join(map(str, r.seeds)) or "none finished"] for r in report.tables.rows]


# ---------------------------------------------------------------------------------- HTML
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } th[colspan] { text-align: center; }
td.label, th.label { text-align: left; white-space: normal; }
td.best { font-weight: bold; background: #e8f4e8; } tr.baseline td { background: #f7f7ff; }
.scroll { overflow-x: auto; } figure { margin: 1.5em 0; } figcaption { font-size: 0.85em; color: #444; }
table.fit { width: 100%; } table.fit th, table.fit td { white-space: normal; overflow-wrap: break-word; }
table.fit td:last-child, table.fit th:last-child { text-align: left; min-width: 8em; }
img { max-width: 100%; } .notice { border-left: 4px solid #c90; padding: 0.3em 0.8em; background: #fff8e6; }
ul.notes { font-size: 0.85em; } p.methods { font-size: 0.85em; max-width: 60em; }
"""


def _html_table(header: list[str], body: list[list], *, table_id: str, label_columns: int = 2,
                fit: bool = False) -> str:
    """``fit``: the table takes the page's width and its cells wrap (``table.fit``), so a wide
    table (the comparisons: 15 columns, long labels and notes) shows every column, its last
    included, without scrolling sideways."""
    out = [f'<div class="scroll"><table id="{table_id}"{" class=fit" if fit else ""}><thead><tr>']
    out += [f'<th{" class=label" if i < label_columns else ""}>{html.escape(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for cells in body:
        out.append("<tr>")
        for i, c in enumerate(cells):
            text, best = c if isinstance(c, tuple) else (c, False)
            classes = " ".join(x for x in ("label" if i < label_columns else "", "best" if best else "") if x)
            out.append(f'<td{f" class={chr(34)}{classes}{chr(34)}" if classes else ""}>{html.escape(str(text))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _results_html(tables: Tables, show_ci: bool) -> str:
    """The results table in the papers' shape: a metric's evaluations under one spanning header."""
    groups: list[tuple[str, list]] = []
    for col in tables.columns:
        head = f"{col.metric} {_direction(col)}".rstrip()
        if col.evaluation is not None and groups and groups[-1][0] == head and groups[-1][1][0].evaluation is not None:
            groups[-1][1].append(col)
        else:
            groups.append((head, [col]))
    two = any(c.evaluation is not None for c in tables.columns)
    span = ' rowspan="2"' if two else ""
    top = [f'<th class="label"{span}>key</th>', f'<th class="label"{span}>configuration</th>']
    sub = []
    for head, cols in groups:
        if cols[0].evaluation is None:
            top.append(f"<th{span}>{html.escape(head)}</th>")
        else:
            top.append(f'<th colspan="{len(cols)}">{html.escape(head)}</th>')
            sub += [f"<th>{html.escape(c.evaluation)}</th>" for c in cols]
    out = ['<div class="scroll"><table id="results"><thead><tr>', *top, "</tr>"]
    if two:
        out += ["<tr>", *sub, "</tr>"]
    out.append("</thead><tbody>")
    for row in tables.rows:
        out.append(f'<tr{" class=baseline" if row.baseline else ""}><td class="label">{row.key}</td>'
                   f'<td class="label">{html.escape(row.label + _marks(row))}</td>')
        for col in tables.columns:
            cell = row.cells[col.name]
            out.append(f'<td{" class=best" if cell.best else ""}>{html.escape(cell_text(cell, show_ci))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(report: Report) -> str:
    t = report.tables
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>", f"<p>{html.escape(_scope_line(report))}</p>"]
    parts += [f'<p class="notice">{html.escape(n)}</p>' for n in report.notices]
    parts += ["<h2>Results</h2>", _results_html(t, report.show_ci),
              '<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in _footnotes(t)) + "</ul>"]
    if t.comparisons:
        parts += ["<h2>Comparisons</h2>",
                  _html_table(COMPARISON_HEADER, [_comparison_cells(c, t) for c in t.comparisons],
                              table_id="comparisons", label_columns=3, fit=True)]
        matrix = _seeds_needed_matrix(t)
        if matrix:
            parts += [f"<h2>Seeds needed ({POWER:.0%} power, α = 0.05, two-sample t-test)</h2>",
                      _html_table(*matrix, table_id="seeds-needed")]
    parts += ["<h2>Configurations</h2>", _html_table(*_configurations_table(report), table_id="configurations")]
    if report.figures:
        parts.append("<h2>Figures</h2>")
        for f in report.figures:
            parts.append(f'<figure><img src="{_embedded(f.path)}" alt="{html.escape(f.title)}">'
                         f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}</figcaption></figure>")
    parts += ["<h2>Methods</h2>", f'<p class="methods">{html.escape(METHODS)}</p>', "</body></html>"]
    return "\n".join(parts)


# ------------------------------------------------------------------------------ CSV, JSON
CSV_FIELDS = ["table", "row", "configuration", "run_id", "column", "metric", "evaluation", "mlflow_key", "mean", "std",
              "n", "ci95_low", "ci95_high", "best", "baseline", "chosen_on_validation", "reference", "diff",
              "diff_ci95_low", "diff_ci95_high", "welch_p", "paired_t_p", "wilcoxon_p", "test", "p", "p_holm",
              "significant", "cohens_d", "hedges_g", "power", "seeds_needed", "low_evidence", "undefined"]


def write_csv(tables: Tables, path: Path) -> Path:
    """Tidy CSV: ``table`` is ``summary`` (one line per configuration and column) or
    ``comparison`` (one line per comparison)."""
    columns = {c.name: c for c in tables.columns}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in tables.rows:
            for name, cell in row.cells.items():
                col = columns[name]
                writer.writerow({"table": "summary", "row": row.key, "configuration": row.label, "run_id": row.run_id,
                                 "column": name, "metric": col.metric, "evaluation": col.evaluation or "",
                                 "mlflow_key": col.key, "mean": cell.mean, "std": cell.std, "n": cell.n,
                                 "ci95_low": cell.ci95_low, "ci95_high": cell.ci95_high, "best": cell.best,
                                 "baseline": row.baseline, "chosen_on_validation": bool(row.chosen_by)})
        for c in tables.comparisons:
            r, row, col = c.result, tables.row(c.row), columns[c.column]
            writer.writerow({"table": "comparison", "row": c.row, "configuration": row.label, "run_id": row.run_id,
                             "column": c.column, "metric": col.metric, "evaluation": col.evaluation or "",
                             "mlflow_key": col.key, "mean": r.mean, "n": r.n, "reference": c.reference,
                             "diff": r.diff, "diff_ci95_low": r.diff_ci95_low, "diff_ci95_high": r.diff_ci95_high,
                             "welch_p": r.welch_p, "paired_t_p": r.paired_p, "wilcoxon_p": r.wilcoxon_p,
                             "test": r.test, "p": r.p, "p_holm": r.p_holm, "significant": r.significant,
                             "cohens_d": r.cohens_d, "hedges_g": r.hedges_g, "power": r.power,
                             "seeds_needed": r.seeds_needed, "low_evidence": r.low_evidence,
                             "undefined": r.undefined or ""})
    return path


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def report_json(report: Report) -> dict:
    return _json_safe(report.to_json())


def write_report(report: Report, outdir: str | Path) -> dict[str, Path]:
    """``report.html``, ``report.md``, ``tables.csv`` and ``tables.json`` under ``outdir``
    (the figures are already under ``outdir/figures``). Returns ``{kind: path}``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = {"html": outdir / HTML_NAME, "md": outdir / MD_NAME, "csv": outdir / CSV_NAME, "json": outdir / JSON_NAME}
    files["html"].write_text(render_html(report), encoding="utf-8")
    files["md"].write_text(render_markdown(report), encoding="utf-8")
    write_csv(report.tables, files["csv"])
    files["json"].write_text(json.dumps(report_json(report), indent=1, allow_nan=False), encoding="utf-8")
    return files
