"""Subgroup fairness of every evaluation (Sy-FAR §7), a summary across groups.

Per evaluation: ``max_bipartition_asym`` (the largest group asymmetry over all bipartitions of
the classes), and per ``eval.subgroups`` attribute ``group_acc/<attr>/<group>`` with the
group's sample count ``group_n/<attr>/<group>`` beside it, ``group_gap/<attr>``, for
class-level attributes ``max_group_asym/<attr>`` and, with an abstaining predictor,
``group_rejection/<attr>/<group>``; the JSON report of every evaluation
(``subgroups.json``, the worst bipartition included) and one bar chart per attribute. The
definitions, the absent-group rule and the left-out groups (``exclude``, ``min_group_size``;
listed in each report's ``left_out``) are in ``distfair.evaluation.subgroups``.
"""
from __future__ import annotations

from pathlib import Path

from distfair.evaluation.subgroups import subgroup_report
from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput


class Subgroups(Summary):
    name = "subgroups"
    artifact = "subgroups.json"
    splits = ("val", "test")
    families = {"max_bipartition_asym": (), "group_acc": ("attribute", "group"), "group_n": ("attribute", "group"),
                "group_gap": ("attribute",), "max_group_asym": ("attribute",),
                "group_rejection": ("attribute", "group")}

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
