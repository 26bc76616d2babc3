"""The report's HTML and figures as a reader sees them: the comparisons table fits a 1600 px
window with its evidence column visible (headless Chromium), the asymmetry heatmaps share one
colour scale and name the matrix their colour bars name, the every-seed figure marks which
points share a seed, and ``worst10_acc`` is shown only where it differs from
``worst_class_acc``. Hand-made tables: no MLflow, no Ray."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from matplotlib import colors as mcolors

from distfair import plotting as plots
from distfair.report import ConfigurationInput, Report, SeedInput, build_tables, draw_figures, write_report
from distfair.report import charts as report_figures

K = 10


def _config(run_id: str, params: dict, robust: dict[int, float], *, scale: int, k: int = K,
            worst10_offset: float = 0.0) -> ConfigurationInput:
    """A configuration whose seeds have ``robust`` = {seed: robust accuracy} under ``pgd`` and a
    confusion matrix whose off-diagonal asymmetry grows with ``scale``."""
    seeds = []
    for s, v in robust.items():
        rng = np.random.default_rng(1000 * scale + s)
        counts = (np.triu(rng.integers(0, 4, size=(k, k)), 1) * scale + np.eye(k, dtype=int) * 40).tolist()
        seeds.append(SeedInput(
            seed=s, run_id=f"{run_id}-{s}",
            metrics={"pgd/robust_acc": v, "robust_acc": v, "clean_acc": v + 0.2, "pgd/acc_gap": 1 - v,
                     "clean_acc_gap": 0.5 - v / 2, "pgd/worst_class_acc": v - 0.3,
                     "pgd/worst10_acc": v - 0.3 + worst10_offset, "pgd/nsd": 0.3 + s / 10},
            class_names=[f"class {i}" for i in range(k)], per_class_acc={"pgd": [0.5] * k},
            confusion={"pgd": counts}))
    flat = {"defense.name": "syfar", "dataset.name": "digits", "eval.attacks.0.name": "pgd", "seeds": "[0, 1, 2]",
            **params}
    return ConfigurationInput(run_id=run_id, name=f"run {run_id}", status="FINISHED", params=flat, tags={},
                              seeds=seeds, experiment="e")


def _configs(**kw) -> list[ConfigurationInput]:
    long = "a value long enough to make the label column wide"
    return [_config("a" * 32, {"defense.lambda_sym": "0.17789248672684851", "defense.note": long},
                    {0: .50, 1: .52, 3: .55}, scale=1, **kw),
            _config("b" * 32, {"defense.lambda_sym": "2.0", "defense.note": long + " too"}, {0: .60, 1: .58, 3: .63},
                    scale=3, **kw),
            _config("c" * 32, {"defense.lambda_sym": "0.5", "defense.note": "x"}, {0: .70, 1: .66, 3: .71}, scale=6,
                    **kw)]


# --------------------------------------------------------------------- (a) the comparisons table
@pytest.fixture(scope="module")
def browser_1600():
    """Headless Chromium at 1600 x 1000 (skipped where there is none, failed in CI)."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if not (browser and driver_path):
        message = "no chromium + chromedriver (apt-get install chromium chromium-driver) or no selenium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def test_the_comparisons_table_fits_a_1600px_window(tmp_path, browser_1600):
    t = build_tables(_configs(), metrics=["robust_acc", "worst_class_acc", "acc_gap", "nsd"], baseline="C1")
    files = write_report(Report("wide", {"description": "hand-made"}, t, [], "now", "sqlite:///x.db", show_ci=True),
                         tmp_path)
    browser_1600.get(files["html"].as_uri())
    width, box, last_header, evidence = browser_1600.execute_script("""
        const t = document.getElementById('comparisons'), box = t.parentElement;
        let right = 0;
        for (const row of t.rows) right = Math.max(right, row.cells[row.cells.length - 1].getBoundingClientRect().right);
        return [document.documentElement.clientWidth, [box.clientWidth, box.scrollWidth, right],
                t.rows[0].cells[t.rows[0].cells.length - 1].innerText,
                t.rows[1].cells[t.rows[1].cells.length - 1].innerText];""")
    client_width, scroll_width, right = box
    assert last_header == "evidence" and evidence.startswith("low")
    assert scroll_width <= client_width, "the comparisons table needs scrolling sideways"
    assert right <= width, f"the evidence column ends at {right}px, the window is {width}px wide"


# --------------------------------------------------------------- (b, c) the asymmetry heatmaps
def test_asymmetry_heatmaps_share_one_colour_scale_and_name_the_same_matrix(tmp_path, monkeypatch):
    drawn = {}
    real = plots.seeds._heatmap

    def spy(values, class_names, title, path, **kw):
        drawn[os.path.basename(str(path))] = (np.asarray(values, dtype=float), kw)
        return real(values, class_names, title, path, **kw)

    monkeypatch.setattr(plots.seeds, "_heatmap", spy)
    t = build_tables(_configs(), metrics=["robust_acc"])
    figures = {f.name: f for f in draw_figures(t, tmp_path / "figures")}
    asym = {name: drawn[name] for name in drawn if name.startswith("asymmetry_")}
    assert set(asym) == {"asymmetry_C1.png", "asymmetry_C2.png", "asymmetry_C3.png"}
    largest = max(float(np.nanmax(values)) for values, _ in asym.values())
    per_figure = [float(np.nanmax(values)) for values, _ in asym.values()]
    assert max(per_figure) / min(per_figure) > 2                      # scales that differ when drawn alone
    assert [kw["vmax"] for _, kw in asym.values()] == pytest.approx([largest] * 3)
    assert {kw["vmin"] for _, kw in asym.values()} == {0.0}
    for name, (_, kw) in asym.items():
        caption = figures[name].caption
        assert "|C_ij − C_ji|" in kw["cbar_label"] and "|C_ij − C_ji|" in caption and "R_ij" not in caption
        assert "row-normalised confusion matrix" in caption and f"0 to {largest:.3f}" in caption


# ------------------------------------------------------------------ (d) the every-seed figure
def test_every_seed_figure_marks_the_points_of_each_seed(tmp_path, monkeypatch):
    kept = {}
    real_save = plots.seeds._save

    def keep(fig, path):
        kept[os.path.basename(str(path))] = fig
        fig.canvas.draw()
        return real_save(fig, path)

    monkeypatch.setattr(plots.seeds, "_save", keep)
    t = build_tables(_configs(), metrics=["robust_acc"])
    figure = next(f for f in report_figures.strips_figure(t, tmp_path) if f.name == "seed_strips.png")
    assert "colour and marker" in figure.caption and "legend" in figure.caption
    fig = kept["seed_strips.png"]
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "seed" and [x.get_text() for x in legend.get_texts()] == ["0", "1", "3"]
    ax = fig.axes[0]                                                   # acc (clean)
    points = [ln for ln in ax.lines if ln.get_linestyle() == "None" and len(ln.get_xdata()) == 1]
    style = {}                                                         # seed -> {(colour, marker)}
    for ln in points:
        value = float(ln.get_ydata()[0])
        seed = next(s for r in t.rows for s, v in r.cells["acc (clean)"].values.items() if v == pytest.approx(value))
        style.setdefault(seed, set()).add((mcolors.to_hex(ln.get_color()), ln.get_marker()))
    assert set(style) == {0, 1, 3} and all(len(v) == 1 for v in style.values())     # one style per seed ...
    assert len({next(iter(v)) for v in style.values()}) == 3                         # ... and a different one each
    # a line per seed joins its points across the three configurations
    joins = [ln for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 3]
    assert len(joins) == 3
    for ln in joins:
        ys = [float(y) for y in ln.get_ydata()]
        seeds = {s for y, r in zip(ys, t.rows) for s, v in r.cells["acc (clean)"].values.items()
                 if v == pytest.approx(y)}
        assert len(seeds) == 1


# ------------------------------------------------------------------------ worst10_acc, K <= 10
def test_worst10_column_is_left_out_where_it_equals_the_worst_class(tmp_path):
    t = build_tables(_configs(), metrics=["worst_class_acc", "worst10_acc"])
    assert [c.name for c in t.columns] == ["worst_class_acc (pgd)"]
    assert t.hidden and "worst10_acc (pgd) is not shown" in t.hidden[0]
    md = write_report(Report("t", {"description": "d"}, t, [], "now", "sqlite:///x.db"), tmp_path)["md"].read_text()
    assert "worst10_acc (pgd) is not shown" in md and "| worst10_acc" not in md
    # more than 10 classes (the lowest two differ from the lowest one): shown
    differs = build_tables(_configs(k=12, worst10_offset=0.05), metrics=["worst_class_acc", "worst10_acc"])
    assert [c.name for c in differs.columns] == ["worst_class_acc (pgd)", "worst10_acc (pgd)"] and not differs.hidden
    with pytest.raises(ValueError, match="worst10_acc .pgd. is not shown.*Ask for worst_class_acc"):
        build_tables(_configs(), metrics=["worst10_acc"])
