"""Evaluation summaries: the contract in ``_base.py``, one summary per module, a registry.

Adding a summary (a statistic across evaluations or groups, a report, a figure) = one module
with a ``Summary`` subclass + one line in ``SUMMARIES``; ``tests/test_summary_contract.py``
picks it up. The evaluation suite runs them (:func:`run_summaries`), the configuration
validates their options (:func:`check_summaries`), the tracking layer logs their documents,
metrics and figures without knowing any of them.

Order matters only for readability of the outputs; no summary reads another's output.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from distfair.registry import Registry, lazy_package

if TYPE_CHECKING:
    from distfair.evaluation.summaries._base import Summary, SummaryContext

SUMMARIES = Registry(__name__, {
    "subgroups": ".subgroups:Subgroups",               # Sy-FAR §7: per-group accuracy, gaps, asymmetries
    "target_success": ".target_success:TargetSuccess", # targeted success rates and "every target" matrices
    "self_checks": ".self_checks:SelfChecks",          # AutoAttack's sanity checks
    "auc_acc": ".auc_acc:AccuracyAUC",                 # speech paper §3 Eq. 1: AUC_acc over an ε grid, defense parity
    "auc_fpr": ".auc_fpr:FalseRejectionAUC",           # speech paper §3.2 Eq. 2: AUC_FPR over a threshold grid, FPR parity
})

__all__ = ["SUMMARIES", "EntryResult", "Summary", "SummaryContext", "SummaryDocuments", "SummaryOutput", "active_summaries",
           "check_summaries", "nested_families", "run_summaries", "validation_entries"]


def nested_families() -> dict[str, tuple[str, ...]]:
    """Metric family -> the fields its keys nest, over every registered summary."""
    out: dict[str, tuple[str, ...]] = {}
    for cls in SUMMARIES.values():
        out.update(cls.families)
    return out


def active_summaries(configured: dict | None, split: str) -> dict[str, tuple[type[Summary], dict]]:
    """The summaries that run on ``split``: the default ones and those named in
    ``eval.summaries`` (``configured``: name -> options), in registry order."""
    configured = configured or {}
    return {name: (cls, dict(configured.get(name) or {})) for name, cls in SUMMARIES.items()
            if split in cls.splits and (cls.default or name in configured)}


def validation_entries(configured: dict | None) -> list[str]:
    """The ``eval.attacks`` entries the validation pass evaluates for its summaries."""
    out: list[str] = []
    for cls, options in active_summaries(configured, "val").values():
        out += [n for n in cls.entries_needed(options) if n not in out]
    return out


def check_summaries(configured, entries: list[dict], *, with_options: bool = True) -> list[tuple[str, str]]:
    """Problems of an ``eval.summaries`` block as (key, message), keys ``eval.summaries...``.
    ``with_options=False``: the names and the block's shape only, without importing any summary."""
    if configured is None:
        return []
    if not isinstance(configured, dict):
        return [("eval.summaries", f"must be a mapping summary name -> options, got {type(configured).__name__}")]
    problems = []
    for name, options in configured.items():
        key = f"eval.summaries.{name}"
        if name not in SUMMARIES:
            problems.append((key, f"unknown summary; known: {', '.join(SUMMARIES)}"))
        elif options is not None and not isinstance(options, dict):
            problems.append((key, f"must be a mapping of options (or empty), got {options!r}"))
        elif with_options:
            problems += [(f"{key}.{k}", m) for k, m in SUMMARIES[name].check_options(dict(options or {}), entries)]
    return problems


def run_summaries(ctx_of: Callable[[dict], SummaryContext], configured: dict | None, split: str, *,
                  failed: Callable[[str, Exception], None], with_model: bool = True
                  ) -> tuple[dict[str, dict], dict[str, float | None], dict[str, dict], list[dict]]:
    """Run the active summaries of ``split``; a summary that raises is reported to
    ``failed("summaries.<name>", err)`` and the others go on (nothing after training is lost).

    ``ctx_of(options)`` builds one summary's context. ``with_model=False`` skips the summaries
    that need the model. Returns (entry name -> metrics added to that evaluation, the
    cross-evaluation metrics, summary name -> ``{"artifact", "document"}`` for the summaries
    with a document, the findings of all summaries)."""
    entry_metrics: dict[str, dict] = {}
    metrics: dict[str, float | None] = {}
    documents: dict[str, dict] = {}
    findings: list[dict] = []
    for name, (cls, options) in active_summaries(configured, split).items():
        if cls.needs_model and not with_model:
            continue
        try:
            out = cls().summarize(ctx_of(options))
        except Exception as err:
            failed(f"summaries.{name}", err)
            continue
        for entry, values in out.entry_metrics.items():
            entry_metrics.setdefault(entry, {}).update(values)
        metrics.update(out.metrics)
        if out.document is not None and cls.artifact:
            documents[name] = {"artifact": cls.artifact, "document": out.document}
        findings += out.findings
    return entry_metrics, metrics, documents, findings


lazy_package(__name__, {name: f"._base:{name}" for name in ("EntryResult", "Summary", "SummaryContext",
                                                            "SummaryDocuments", "SummaryOutput")})
