"""False rejection over a threshold grid and FPR Parity (speech paper 003, §3.2, Eq. 2), a
summary over the clean evaluation's stored scores and groups.

For a predictor that rejects by thresholding its score (``Predictor.reject_rule``:
randomized smoothing's binomial p-value, rejected above α; neural rejection's raw
one-vs-rest SVM decision value, rejected below t), every clean sample is benign, so every
rejection of one is a false positive. ``FPR_s(α)`` = the fraction of subgroup s's clean
samples rejected at threshold α, recomputed from the per-sample scores for each α of the grid (the predictor ran
once; its operating threshold plays no role here), and

    AUC_FPR(s) = ∫_{α_min}^{α_max} FPR_s(α) dα        (Eq. 2)

by the trapezoid rule on a linear α axis over the grid α_min, α_min + step, ..., α_max (the
paper's [0.001, 1] in steps of 0.001, 1000 points), not normalised by the range. A score on
[0, 1] (a p-value) is thresholded at α itself; a raw score without a fixed scale comes with
the predictor's ``score_range`` (lo, hi), fixed before the test set is seen (neural rejection:
the min and max score over its SVMs' training samples), and is thresholded at
lo + α·(hi − lo), so the grid spans that range and AUC_FPR stays an integral over α. FPR parity
of an attribute = the largest AUC_FPR difference between its subgroups (§3.2: "the largest
difference between subgroups"; the paper plots it as "parity", lower = more equal).

Options (``eval.summaries.auc_fpr``): ``alpha_min`` (0.001), ``alpha_max`` (1.0), ``step``
(0.001), ``bootstrap`` (``{resamples: 1000, cluster_by: speaker, level: 0.95, seed: 0}``).
Runs by default on both splits; it reports nothing for a predictor without a
threshold rule. Metrics (bare on test, ``val_``-prefixed from the validation pass, so a sweep
can select on them): ``auc_fpr`` over all clean samples, ``group_auc_fpr/<attr>/<group>``,
``fpr_parity/<attr>``. Document ``auc_fpr.json`` (the grid, the score range and the score
thresholds where there is one, each group's curve and its clean samples ``n``, the groups left
out by ``exclude`` or ``min_group_size``, which take no part in the parity); figures: FPR against the threshold, overall and
per attribute. For a predictor that adds Gaussian noise σ to its input (randomized smoothing), how
loud that noise is against each group's clips (``distfair.evaluation.loudness``): the mean per-clip
10·log10(mean(x²) / σ²) in dB, ``noise_snr_db`` and ``group_noise_snr_db/<attr>/<group>``,
document ``noise``.

**Speaker-level intervals.** The paper's groups are groups of speakers (§4.1: AudioMNIST's 60
speakers, Common Voice's held-out speakers; §5 compares groups of a handful of them), and the
clips of one speaker are not independent. Each group's AUC_FPR and each FPR parity get a
percentile interval from a bootstrap over speakers, stratified by group
(``distfair.evaluation.summaries._cluster_bootstrap``): ``group_auc_fpr_lo/<attr>/<group>``,
``group_auc_fpr_hi/<attr>/<group>``, ``fpr_parity_lo/<attr>``, ``fpr_parity_hi/<attr>``, and in
the document each group's ``interval`` and the attribute's ``fpr_parity_interval`` (with the
speakers resampled and, where there is no interval, why: a one-speaker group), and the options
under ``bootstrap``. Each clip's rejections are integrated over the threshold grid once, so a
resample is one weighted sum per group. ``bootstrap: {resamples: 0}`` turns it off. The
figures show each interval beside its area, in the legend and the title.
"""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path

import numpy as np

from distfair.evaluation.loudness import noise_snr
from distfair.evaluation.predict import thresholds_on_range
from distfair.evaluation.subgroups import metric_safe
from distfair.evaluation.summaries import _cluster_bootstrap as cb
from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput
from distfair.evaluation.summaries.auc_acc import _fmt, _n, trapezoid_auc

DEFAULTS = {"alpha_min": 0.001, "alpha_max": 1.0, "step": 0.001}
#: points of each curve drawn in the figures (the document keeps every grid point)
FIGURE_POINTS = 101


def threshold_grid(alpha_min: float, alpha_max: float, step: float) -> np.ndarray:
    """α_min, α_min + step, ..., α_max (inclusive; computed as α_min + i·step, rounded to 12
    decimals so 0.001-steps are exact decimals)."""
    n = int(round((alpha_max - alpha_min) / step)) + 1
    return np.round(alpha_min + step * np.arange(n), 12)


def fpr_curve(rejected: np.ndarray, members: np.ndarray) -> list[float] | None:
    """FPR at each threshold over ``members`` from the (T, N) rejection matrix; None without members."""
    if not members.any():
        return None
    return rejected[:, members].mean(axis=1).astype(float).tolist()


class FalseRejectionAUC(Summary):
    name = "auc_fpr"
    artifact = "auc_fpr.json"
    splits = ("val", "test")
    default = True
    families = {"auc_fpr": (), "group_auc_fpr": ("attribute", "group"), "fpr_parity": ("attribute",),
                "noise_snr_db": (), "group_noise_snr_db": ("attribute", "group"),
                **cb.bound_families({"group_auc_fpr": ("attribute", "group"), "fpr_parity": ("attribute",)})}

    @classmethod
    def check_options(cls, options: dict, entries: list[dict]) -> list[tuple[str, str]]:
        problems = [(k, f"unknown option; known: {', '.join(DEFAULTS)}, bootstrap") for k in options
                    if k not in DEFAULTS and k != "bootstrap"]
        problems += cb.check_options(options.get("bootstrap"))
        values = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
        for key in DEFAULTS:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
                problems.append((key, f"must be a number, got {value!r}"))
        if problems:
            return problems
        if not 0 <= values["alpha_min"] < values["alpha_max"]:
            problems.append(("alpha_min", f"need 0 <= alpha_min < alpha_max, got {values['alpha_min']} and "
                                          f"{values['alpha_max']}"))
        elif not 0 < values["step"] <= values["alpha_max"] - values["alpha_min"]:
            problems.append(("step", f"must be > 0 and at most alpha_max - alpha_min, got {values['step']}"))
        else:
            n = (values["alpha_max"] - values["alpha_min"]) / values["step"]
            if abs(n - round(n)) > 1e-6:
                problems.append(("step", f"must divide alpha_max - alpha_min into whole steps, got {values['step']}"))
            elif n > 1e6:
                problems.append(("step", f"gives {int(n) + 1} thresholds; at most 1,000,001"))
        return problems

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        out = SummaryOutput()
        clean = ctx.entries.get("clean")
        if clean is None or clean.predictions.reject_rule is None:
            return out                      # no clean results or a predictor without a threshold rule
        opts = {**DEFAULTS, **ctx.options}
        grid = threshold_grid(float(opts["alpha_min"]), float(opts["alpha_max"]), float(opts["step"]))
        score_range = clean.predictions.score_range
        cuts = thresholds_on_range(grid, score_range)               # the score thresholds of the grid
        rejected = clean.predictions.rejected(cuts)                 # (T, N)
        members = clean.members
        overall = fpr_curve(rejected, members)
        doc = {"rule": clean.predictions.reject_rule, "operating_threshold": clean.predictions.threshold,
               "grid": {k: float(opts[k]) for k in DEFAULTS}, "axis": "linear", "thresholds": grid.tolist(),
               "score_range": None if score_range is None else [float(v) for v in score_range],
               "score_thresholds": None if score_range is None else cuts.tolist(),
               "fpr": overall, "auc_fpr": None if overall is None else trapezoid_auc(grid.tolist(), overall),
               "attributes": {}}
        out.metrics["auc_fpr"] = doc["auc_fpr"]
        boot, clusters, skipped = cb.resolve(ctx.options.get("bootstrap"), ctx.attributes, len(members))
        doc["bootstrap"] = cb.record(boot, skipped)
        # each clip's rejections integrated over the grid: a group's AUC_FPR is their mean
        area = cb.trapezoid_weights(grid) @ rejected if clusters is not None else None
        for grouping in ctx.groupings:
            attr = metric_safe(grouping.attribute)
            labels = clean.groups(grouping)
            groups, aucs, counts = {}, {}, {}
            for g, group in enumerate(grouping.names):
                curve = fpr_curve(rejected, members & (labels == g))
                auc = None if curve is None else trapezoid_auc(grid.tolist(), curve)
                groups[group] = {"n": int((members & (labels == g)).sum()), "fpr": curve, "auc_fpr": auc}
                out.metrics[f"group_auc_fpr/{attr}/{metric_safe(group)}"] = auc
                if auc is not None:
                    aucs[group] = auc
                    if clusters is not None:
                        counts[group] = cb.cluster_counts(clusters, members & (labels == g), area[:, None],
                                                          np.ones(len(members)))
            empty = [g for g, v in groups.items() if v["auc_fpr"] is None]
            if empty:
                warnings.warn(f"auc_fpr: groups {empty} of attribute {grouping.attribute!r} have no clean samples; "
                              "they have no AUC_FPR and are left out of the FPR parity", UserWarning, stacklevel=2)
            parity = max(aucs.values()) - min(aucs.values()) if len(aucs) >= 2 else None
            out.metrics[f"fpr_parity/{attr}"] = parity
            doc["attributes"][grouping.attribute] = {"groups": groups, "fpr_parity": parity,
                                                     "left_out": dict(grouping.left_out)}
            if clusters is not None:
                cb.add_intervals(out.metrics, doc["attributes"][grouping.attribute], counts, np.ones(1), boot,
                                 attr=attr, group_family="group_auc_fpr", parity_family="fpr_parity")
        noise_metrics, noise_doc = noise_snr(clean, ctx.groupings)     # randomized smoothing's σ, per group
        out.metrics.update(noise_metrics)
        if noise_doc is not None:
            doc["noise"] = noise_doc
        out.document = doc
        return out

    def figures(self, document, class_names, title, outdir: Path) -> list[Path]:
        """``auc_fpr.png`` (all clean samples) and ``auc_fpr_<attr>.png``: FPR against the threshold."""
        from distfair.plotting import accuracy_curves, file_safe

        if not document or document.get("fpr") is None:
            return []
        thresholds = document["thresholds"]
        pick = np.unique(np.linspace(0, len(thresholds) - 1, min(FIGURE_POINTS, len(thresholds))).round().astype(int))

        def sub(values):
            return [values[i] for i in pick]

        xs = sub(thresholds)
        if document.get("score_range") is not None:
            lo, hi = document["score_range"]
            label = f"threshold position α (reject score < {lo:.3g} + α·{hi - lo:.3g})"
        else:
            label = "threshold α (reject p > α)" if document["rule"] == "above" else "threshold t (reject score < t)"
        paths = [accuracy_curves(xs, {"all clean samples": sub(document["fpr"])},
                                 f"{title}: false rejection (AUC_FPR {_fmt(document['auc_fpr'])})",
                                 Path(outdir) / "auc_fpr.png", xlabel=label, ylabel="false rejection rate")]
        for attr, info in document["attributes"].items():
            curves = {f"{g} ({_n(v.get('n'))}AUC {_fmt(v['auc_fpr'])}{cb.interval_text(v.get('interval'))})":
                      (sub(v["fpr"]) if v["fpr"] is not None else [None] * len(xs))
                      for g, v in info["groups"].items()}
            paths.append(accuracy_curves(xs, curves, f"{title}: false rejection by {attr} "
                                         f"(FPR parity {_fmt(info['fpr_parity'])}"
                                         f"{cb.interval_text(info.get('fpr_parity_interval'))})",
                                         Path(outdir) / f"auc_fpr_{file_safe(attr)}.png", xlabel=label,
                                         ylabel="false rejection rate"))
        return paths
