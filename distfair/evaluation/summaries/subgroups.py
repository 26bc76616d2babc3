"""Subgroup fairness of every evaluation (Sy-FAR §7), a summary across groups.

Per evaluation: ``max_bipartition_asym`` (the largest group asymmetry over all bipartitions of
the classes), and per ``eval.subgroups`` attribute ``group_acc/<attr>/<group>`` with the
group's sample count ``group_n/<attr>/<group>`` beside it, ``group_gap/<attr>``, for
class-level attributes ``max_group_asym/<attr>`` and, with an abstaining predictor,
``group_rejection/<attr>/<group>``; the JSON report of every evaluation
(``subgroups.json``, the worst bipartition included) and one bar chart per attribute. The
definitions, the absent-group rule and the left-out groups (``exclude``, ``min_group_size``;
listed in each report's ``left_out``) are in ``distfair.evaluation.subgroups``.

On the test split it also records each reported group's training-set size |X_train,s|
(speech paper 003 §5.2.2), ``group_train_n/<attr>/<group>``, logged bare beside the test
metrics (``distfair.evaluation.group_sizes``): what ``distfair analyze`` correlates with the
group's AUC_FPR. An attribute without training-set values is skipped with a ``UserWarning``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from distfair.evaluation.group_sizes import training_group_sizes
from distfair.evaluation.subgroups import metric_safe, subgroup_report
from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput


class Subgroups(Summary):
    name = "subgroups"
    artifact = "subgroups.json"
    splits = ("val", "test")
    families = {"max_bipartition_asym": (), "group_acc": ("attribute", "group"), "group_n": ("attribute", "group"),
                "group_gap": ("attribute",), "max_group_asym": ("attribute",),
                "group_rejection": ("attribute", "group"), "group_train_n": ("attribute", "group")}

    @classmethod
    def view(cls, document):
        """Evaluation name -> subgroup report (``result.subgroups``; empty without one)."""
        return document or {}

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        out = SummaryOutput(document={})
        for name, entry in ctx.entries.items():
            abstained = None if entry.abstained is None else entry.abstained.numpy()
            metrics, report = subgroup_report(
                ctx.groupings, entry.counts.numpy(), entry.robust, ctx.class_names, included=entry.included,
                abstained=abstained, rejected=None if abstained is None else entry.rejected)
            out.entry_metrics[name] = metrics
            out.document[name] = report
        if ctx.split == "test" and ctx.data is not None:
            sizes, skipped = training_group_sizes(ctx.groupings, ctx.data)
            for attr, groups in sizes.items():
                out.metrics.update({f"group_train_n/{metric_safe(attr)}/{metric_safe(g)}": float(n)
                                    for g, n in groups.items()})
            for attr, why in skipped.items():
                warnings.warn(f"subgroups: no training-set sizes of attribute {attr!r}: {why}", UserWarning,
                              stacklevel=2)
        return out

    def figures(self, document, class_names, title, outdir: Path) -> list[Path]:
        """``groups_<attr>.png``: per attribute, the group accuracies of every evaluation (a group
        labelled with its n where every evaluation has the same)."""
        from distfair.plotting import file_safe, group_bars

        attributes: dict[str, dict[str, dict[str, float]]] = {}
        sizes: dict[str, dict[str, set]] = {}
        for evaluation, report in (document or {}).items():
            for attr, info in report.get("attributes", {}).items():
                attributes.setdefault(attr, {})[evaluation] = {g: v for g, v in info["group_acc"].items()
                                                               if v is not None}
                for g, n in (info.get("n") or {}).items():
                    sizes.setdefault(attr, {}).setdefault(g, set()).add(n)
        paths = []
        for attr, groups in attributes.items():
            label = {g: f"{g} (n={next(iter(n))})" for g, n in sizes.get(attr, {}).items() if len(n) == 1}
            groups = {e: {label.get(g, g): v for g, v in accs.items()} for e, accs in groups.items()}
            paths.append(group_bars(groups, f"{title}: accuracy by {attr}",
                                    Path(outdir) / f"groups_{file_safe(attr)}.png"))
        return paths
