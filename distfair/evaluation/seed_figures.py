"""Every figure of one seed run, drawn from its result (``SeedResult.to_dict()``) alone.

Per evaluation (``clean`` and each attack) ``confusion_<e>.png``, ``asymmetry_<e>.png`` and
``target_shares_<e>.png``; ``per_class_acc.png`` (all evaluations); with abstentions
``per_class_rejection.png``; then every summary's own figures, drawn from its document
(``Summary.figures``: ``groups_<attr>.png``, ``target_success_<e>.png``, ``auc_acc*.png``, ...).
An evaluation with abstentions (``result["abstentions"]``) draws them as the confusion
heatmap's "abstained" column and divides every rate by the class totals. The drawing itself
is ``distfair.plotting``.
"""
from __future__ import annotations

from pathlib import Path

from distfair.evaluation.summaries import SUMMARIES
from distfair.plotting import (asymmetry_heatmap, confusion_heatmap, file_safe, per_class_bars, target_share_bars)


def seed_figures(result: dict, title: str, outdir: str | Path) -> list[Path]:
    """Write every figure of one seed run into ``outdir``; ``title`` names the defense and
    seed, each figure adds its evaluation. Returns the paths."""
    outdir = Path(outdir)
    names = result["class_names"]
    paths = []
    abstentions = result.get("abstentions") or {}
    for name, counts in result["confusion"].items():
        label = f"{title} — {name}"
        abstained = (abstentions.get(name) or {}).get("abstained")
        paths.append(confusion_heatmap(counts, names, label, outdir / f"confusion_{file_safe(name)}.png",
                                       abstained=abstained))
        paths.append(asymmetry_heatmap(counts, names, f"{label}: |C_ij − C_ji|",
                                       outdir / f"asymmetry_{file_safe(name)}.png", abstained=abstained))
        paths.append(target_share_bars(counts, names, f"{label}: target shares",
                                       outdir / f"target_shares_{file_safe(name)}.png", abstained=abstained))
    if result["per_class_acc"]:
        paths.append(per_class_bars(result["per_class_acc"], names, f"{title}: per-class accuracy",
                                    outdir / "per_class_acc.png"))
    if abstentions:
        paths.append(per_class_bars({n: v["per_class_rejection"] for n, v in abstentions.items()}, names,
                                    f"{title}: per-class rejection rate", outdir / "per_class_rejection.png",
                                    ylabel="per-class rejection rate"))
    for name, summary in (result.get("summaries") or {}).items():
        if name in SUMMARIES:
            paths += SUMMARIES[name]().figures(summary["document"], names, title, outdir)
    return paths
