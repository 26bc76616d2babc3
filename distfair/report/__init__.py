"""``distfair report``: paper-style tables with seed statistics, significance tests and
figures, written as one self-contained HTML file (plus Markdown, CSV and JSON).

* :mod:`distfair.report.tables`: rows (configurations labelled by the params they differ
  in), columns (metrics per evaluation), cells (mean ± std (n)), comparisons, the best-cell
  rule, the sweeps' validation choices;
* :mod:`distfair.report.stats`: Welch, paired t, Wilcoxon, Cohen's d / Hedges' g, Holm,
  seeds needed (SciPy and statsmodels);
* :mod:`distfair.report.charts`: the figures (``distfair.plotting``);
* :mod:`distfair.report.render`: the files.

Pure computation over plain inputs: no MLflow, no Ray. ``distfair.cli`` reads the runs
through ``distfair.tracking`` and logs the files back.
"""
from distfair.report.charts import Figure, draw_figures
from distfair.report.render import FIGURES_DIR, Report, markdown_tables, report_json, write_report
from distfair.report.stats import ALPHA, Comparison, compare, holm, seeds_needed
from distfair.report.tables import (ConfigurationInput, SeedInput, SweepInput, Tables, build_tables, find_baseline,
                                    labels, resolve_columns)

__all__ = ["ALPHA", "Comparison", "ConfigurationInput", "FIGURES_DIR", "Figure", "Report", "SeedInput", "SweepInput",
           "Tables", "build_tables", "compare", "draw_figures", "find_baseline", "holm", "labels",
           "markdown_tables", "report_json", "resolve_columns", "seeds_needed", "write_report"]
