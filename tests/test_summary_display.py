"""What a configuration's seed summary shows: the terminal table at the end of ``distfair run``
(the primary attack named on its rows, the 95% interval column, ``worst10_acc`` only where it
differs from ``worst_class_acc``) and the configuration run's MLflow description (the summary
first, where the UI's run page opens), the latter on a real SQLite MLflow store, no Ray."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from distfair import cli, tracking
from distfair.experiment import run
from distfair.engine.train import metric_record
from distfair.metrics import aggregate_seed_metrics, fairness_metrics, worst10_is_worst_class

T1 = 12.706204736174707           # t_{0.975, 1}


def _seed(robust: float, clean: float = 0.9, *, primary: str = "pgd20", extra: str = "fgsm") -> dict:
    """One seed's final metrics as the seed runs log them: the primary attack bare and prefixed."""
    attacked = {"acc": robust, "worst_class_acc": robust - 0.2, "worst10_acc": robust - 0.2, "acc_gap": 0.4,
                "nsd": 0.3, "max_asym_gap": 0.2}
    clean_m = {"acc": clean, "worst_class_acc": clean - 0.1, "worst10_acc": clean - 0.1}
    return metric_record(clean_m, [(primary, attacked), (extra, {**attacked, "acc": robust + 0.1})])


def _rows(table: str) -> dict[str, str]:
    """metric label -> its line (the label is everything before the first double space)."""
    return {line.split("  ")[0]: line for line in table.splitlines()[1:]}


def test_robust_rows_name_their_attack_and_show_the_interval():
    summary = aggregate_seed_metrics([_seed(0.3), _seed(0.9)])
    table = cli.format_table(summary, ["fgsm"], "pgd20")
    rows = _rows(table)
    assert list(rows) == ["clean_acc", "robust_acc (pgd20)", "clean_worst_class_acc", "worst_class_acc (pgd20)",
                          "acc_gap (pgd20)", "nsd (pgd20)", "max_asym_gap (pgd20)", "fgsm/robust_acc",
                          "fgsm/worst_class_acc"]
    assert "95% CI" in table.splitlines()[0]
    # robust_acc over [0.3, 0.9]: 0.6 -+ 12.706 * 0.4243 / sqrt(2) = [-3.21, 4.41], clipped to [0, 1]
    assert rows["robust_acc (pgd20)"].split() == ["robust_acc", "(pgd20)", "0.6000", "±", "0.4243", "[0.0000,",
                                                  "1.0000]", "0.3000", "0.9000", "2"]
    # the same interval the configuration run logs as robust_acc_ci95_low/_high
    assert (summary["robust_acc"]["ci95_low"], summary["robust_acc"]["ci95_high"]) == (0.0, 1.0)
    # nsd has no declared range: its interval is not clipped
    half = T1 * summary["nsd"]["std"] / math.sqrt(2)
    assert summary["nsd"]["std"] == 0.0 and f"[{0.3 - half:.4f}, {0.3 + half:.4f}]" in rows["nsd (pgd20)"]
    # one seed: no interval
    one = _rows(cli.format_table(aggregate_seed_metrics([_seed(0.5)]), ["fgsm"], "pgd20"))
    assert one["robust_acc (pgd20)"].split()[2:6] == ["0.5000", "±", "—", "—"]


def test_the_run_report_names_the_configurations_first_attack():
    """The speech quickstart's primary evaluation is its smallest budget, pgd_1e-4."""
    cfg = {"seeds": [0, 1], "eval": {"attacks": [{"name": "pgd_1e-4"}, {"name": "pgd_1e-3"}]}}
    summary = aggregate_seed_metrics([_seed(0.6, primary="pgd_1e-4", extra="pgd_1e-3"),
                                      _seed(0.7, primary="pgd_1e-4", extra="pgd_1e-3")])
    report = run.RunReport(experiment="e", experiment_id="1", parent_run_id="p" * 32, tracking_uri="sqlite:///x.db",
                           seeds=[0, 1], metrics=summary, errors={})
    out = io.StringIO()
    cli._print_run_report(report, cfg, "", "sqlite:///x.db", out, final=False)
    text = out.getvalue()
    assert "Mean ± std across seeds; 95% CI: Student-t interval of the mean, clipped to [0, 1]" in text
    table = text.split("seeds finished.", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
    rows = _rows(table)
    assert "robust_acc (pgd_1e-4)" in rows and "worst_class_acc (pgd_1e-4)" in rows
    assert "pgd_1e-3/robust_acc" in rows and "robust_acc" not in rows
    # no eval.attacks: nothing is named after an attack
    plain = cli.format_table(aggregate_seed_metrics([{"clean_acc": 0.9}, {"clean_acc": 0.8}]), [], None)
    assert list(_rows(plain)) == ["clean_acc"]


def _counts(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 6, size=(k, k)) + np.diag(rng.integers(5, 40, size=k))


@pytest.mark.parametrize("k, shown", [(10, False), (12, True), (100, True)])
def test_worst10_only_where_it_differs_from_the_worst_class(k, shown):
    seeds = []
    for seed in range(3):
        m = fairness_metrics(_counts(k, seed))
        if k <= 10:
            assert m["worst10_acc"] == m["worst_class_acc"]          # ceil(K/10) = 1: the worst class itself
        seeds.append(metric_record({"acc": 0.9}, [("pgd20", m)]))
    summary = aggregate_seed_metrics(seeds)
    assert worst10_is_worst_class(summary["worst10_acc"]["values"], summary["worst_class_acc"]["values"]) is not shown
    rows = _rows(cli.format_table(summary, [], "pgd20"))
    assert ("worst10_acc (pgd20)" in rows) is shown and "worst_class_acc (pgd20)" in rows


def test_worst10_is_worst_class_compares_seed_by_seed():
    assert worst10_is_worst_class({0: 0.2, 1: 0.3}, {0: 0.2, 1: 0.3})
    assert not worst10_is_worst_class({0: 0.25, 1: 0.3}, {0: 0.2, 1: 0.3})
    assert not worst10_is_worst_class({0: 0.2}, {0: 0.2, 1: 0.3})          # not the same seeds
    assert not worst10_is_worst_class([], [])                               # nothing to compare: shown


# ------------------------------------------------------------------ the MLflow description
@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/m.db"


NOTICE = "spoken_words subgroups are synthetic voices, not people"


def _note(uri: str, run_id: str) -> str:
    return MlflowClient(uri).get_run(run_id).data.tags[tracking.TAG_DESCRIPTION]


def _section(summary: dict, *, notice: str | None = None) -> str:
    return run.summary_markdown(summary, run.main_metrics(list(summary)), seeds=[0, 1], planned=[0, 1], errors={},
                                figure=tracking.SEED_STABILITY_FIGURE, primary="pgd20", notice=notice)


def test_the_seed_summary_opens_the_configuration_runs_description(uri):
    exp = tracking.prepare_experiment(uri, "summary_first")
    parent = tracking.start_parent_run(uri, exp, {"train.lr": 0.1}, run_name="p",
                                       description=f"Sy-FAR on digits.\n\n{NOTICE}")
    summary = aggregate_seed_metrics([_seed(0.3), _seed(0.9)])
    tracking.log_parent_summary(uri, parent, summary, n_seeds=2, description=_section(summary, notice=NOTICE))

    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    note = _note(uri, parent)
    lines = note.splitlines()
    # what the UI shows before "Show more": the heading, the dataset's notice, then the table
    assert lines[0] == run.SUMMARY_HEADING and lines[2] == f"*{NOTICE}*"
    assert lines[4:6] == ["| metric | mean ± std | n | 95% CI |", "|---|---|---|---|"]
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert list(rows)[1:] == ["clean_acc", "robust_acc (pgd20)", "clean_worst_class_acc", "worst_class_acc (pgd20)",
                              "acc_gap (pgd20)", "nsd (pgd20)", "max_asym_gap (pgd20)"]
    assert rows["robust_acc (pgd20)"] == "| robust_acc (pgd20) | 0.6000 ± 0.4243 | 2 | [0.0000, 1.0000] |"
    # the same numbers the run holds as metrics
    logged = client.get_run(parent).data.metrics
    assert (logged["robust_acc_mean"], logged["robust_acc_ci95_low"], logged["robust_acc_ci95_high"]) == (
        pytest.approx(0.6), 0.0, 1.0)
    assert "2 of 2 seeds finished (0, 1)" in note
    # the text the run was created with follows the summary
    assert note.endswith(f"\n\nSy-FAR on digits.\n\n{NOTICE}")

    # summarised again (a resumed run): replaced in place, never twice
    tracking.log_parent_summary(uri, parent, summary, n_seeds=2, description=_section(summary, notice=NOTICE))
    assert _note(uri, parent) == note


def test_an_older_summary_at_the_end_moves_to_the_top(uri):
    """A configuration run summarised by an older version (the section appended at the end),
    resumed now: one section, at the top, the run's own text kept."""
    exp = tracking.prepare_experiment(uri, "older")
    old = _section(aggregate_seed_metrics([_seed(0.1)])).replace("1 of", "OLD 1 of")
    parent = tracking.start_parent_run(uri, exp, {}, run_name="p", description=f"My notes.\n\n{old}")
    summary = aggregate_seed_metrics([_seed(0.3), _seed(0.9)])
    tracking.log_parent_summary(uri, parent, summary, n_seeds=2, description=_section(summary))
    note = _note(uri, parent)
    assert note.startswith(run.SUMMARY_HEADING) and note.count(run.SUMMARY_HEADING) == 1
    assert "OLD" not in note and note.endswith("\n\nMy notes.")
