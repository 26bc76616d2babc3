"""Targeted success of the targeted evaluations (Sy-FAR §5 "target-class fairness").

Per evaluation with a fixed target class: ``target_success_rate``, the fraction of the
attacked samples (the target class's own samples are not attacked) driven to the target. Per
"every target" evaluation (each wrong class in turn): ``target_success_rate`` over all
K·(K-1) (sample, target) tries, the K×K matrix of rates (rows true class, columns target;
the diagonal and absent classes ``null``) in ``target_success.json`` and as a heatmap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput


def success_rates(success: torch.Tensor, labels: torch.Tensor, k: int) -> list[list[float | None]]:
    """K×K rates: successes toward t among the samples of true class i (None on the
    diagonal and for a class without samples)."""
    per_class = torch.bincount(labels, minlength=k).double()
    rates = success.double() / per_class.clamp(min=1)[:, None]
    return [[None if i == j or per_class[i] == 0 else float(rates[i, j]) for j in range(k)] for i in range(k)]


class TargetSuccess(Summary):
    name = "target_success"
    artifact = "target_success.json"
    splits = ("val", "test")
    families = {"target_success_rate": ()}

    @classmethod
    def view(cls, document):
        """"every target" evaluation -> K×K success rates (``result.target_success``)."""
        return (document or {}).get("rates", {})

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        out = SummaryOutput()
        rates = {}
        for name, entry in ctx.entries.items():
            pred, k = entry.predictions, ctx.num_classes
            if pred.target_success is not None:
                rates[name] = success_rates(pred.target_success, pred.labels, k)
                tries = len(pred.labels) * (k - 1)
                out.entry_metrics[name] = {"target_success_rate": float(pred.target_success.sum()) / tries
                                           if tries else None}
            elif isinstance(entry.target, int):
                aimed = pred.labels != entry.target
                out.entry_metrics[name] = {"target_success_rate": float((pred.preds[aimed] == entry.target)
                                                                        .double().mean()) if aimed.any() else None}
        if rates:
            out.document = {"rows": "true class", "columns": "target class", "class_names": list(ctx.class_names),
                            "rates": rates}
        return out

    def figures(self, document, class_names, title, outdir: Path) -> list[Path]:
        """``target_success_<entry>.png`` per "every target" evaluation."""
        from distfair.plotting import file_safe, target_success_heatmap

        paths = []
        for name, matrix in ((document or {}).get("rates") or {}).items():
            values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
            paths.append(target_success_heatmap(values, class_names, f"{title} — {name}: every target",
                                                Path(outdir) / f"target_success_{file_safe(name)}.png"))
        return paths
