"""The evaluation-summary contract: what every entry of an evaluation hands to the summaries,
and what a summary gives back.

An *evaluation* is the clean pass or one ``eval.attacks`` entry. Each produces an
:class:`EntryResult`: its per-sample records (prediction or abstention, the predictor's score,
the robust flag, which samples belong to it) and its core per-evaluation statistics (the K×K
confusion counts, the abstentions per true class, the fairness metrics). A :class:`Summary`
reads the entries of one split together (a :class:`SummaryContext`) and returns a
:class:`SummaryOutput`: metrics added to single evaluations (``entry_metrics``, logged as that
evaluation's metrics: ``pgd20/group_gap/gender``), metrics that span evaluations (``metrics``,
logged bare on the test split and ``val_``-prefixed on the validation split), one JSON
document (its artifact), findings (self-check warnings, logged as tags) and figures drawn
from the document alone.

Adding a summary is one module with a :class:`Summary` subclass and one line in
``distfair.evaluation.summaries.SUMMARIES``; ``tests/test_summary_contract.py`` runs every
registered summary through the shared contract (JSON-able output, finite values or None,
metric-safe keys, inputs untouched, figures from the document, errors named). The training
loop, the tracking layer and the plots never change for a new summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from distfair.evaluation.predict import Predictions

#: the splits a summary may run on
SPLITS = ("val", "test")


@dataclass
class EntryResult:
    """The per-sample records and core statistics of one evaluation.

    ``name``: ``clean`` or the ``eval.attacks`` entry name; ``spec``: that entry (the attack's
    options included; None for clean); ``target``: resolved (None, a class index or "every");
    ``predictions``: per sample the true class, the prediction (``ABSTAIN`` = -1), the score,
    ensemble stages and targeted successes (``distfair.evaluation.predict.Predictions``);
    ``included``: (N,) bool, the samples that belong to this evaluation (a fixed target leaves
    its own class out; None = all); ``counts``: K×K confusion counts of the included,
    non-abstained samples; ``abstained``: (K,) abstentions per true class (None when the
    predictor cannot abstain); ``metrics``: the core metric dict (``fairness_metrics`` and
    the rejection / stage keys); ``attack``: the attack object (None for clean).
    """
    name: str
    spec: dict | None
    target: int | str | None
    predictions: Predictions
    included: np.ndarray | None
    counts: torch.Tensor
    abstained: torch.Tensor | None
    metrics: dict[str, float | None]
    per_class_acc: list[float | None]
    per_class_rejection: list[float | None] | None = None
    attack: Any = None

    @property
    def robust(self) -> np.ndarray:
        """(N,) bool: the sample is classified correctly (an abstention never is)."""
        return self.predictions.correct.numpy()

    @property
    def rejected(self) -> np.ndarray:
        """(N,) bool: the predictor abstained on the sample."""
        return self.predictions.abstained.numpy()

    @property
    def members(self) -> np.ndarray:
        """(N,) bool: ``included``, or every sample."""
        n = len(self.predictions.labels)
        return np.ones(n, dtype=bool) if self.included is None else np.asarray(self.included, dtype=bool)

    def groups(self, grouping) -> np.ndarray:
        """(N,) group index of each sample under ``grouping`` (class-level attributes map each
        sample's true class to its group)."""
        if grouping.kind == "class":
            return np.asarray(grouping.labels)[self.predictions.labels.numpy()]
        return np.asarray(grouping.labels)


@dataclass
class SummaryContext:
    """Everything a summary may read: the evaluations of one split (``clean`` first, then
    ``eval.attacks`` order; a failed evaluation is absent), the split's subgroup partitions,
    the class names, this summary's options from ``eval.summaries``, the split's per-sample
    attributes (``attributes[a][i]`` describes sample i of every entry's predictions, e.g. its
    ``speaker``: ``DataBundle.test_attributes`` / ``val_attributes``; empty when the dataset has
    none), and, on the test split only, the model, the dataset and the device (for the
    summaries that declare ``needs_model``; elsewhere they are None)."""
    split: str
    entries: dict[str, EntryResult]
    groupings: list
    class_names: list[str]
    num_classes: int
    options: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    data: Any = None
    device: torch.device | None = None
    batch_size: int = 256
    attributes: dict = field(default_factory=dict)


@dataclass
class SummaryOutput:
    entry_metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    document: Any = None
    findings: list[dict] = field(default_factory=list)


class Summary:
    """One evaluation summary. Subclasses set:

    - ``name``: the registry key and the key of its options in ``eval.summaries``;
    - ``artifact``: the file name of its JSON document on the seed run (None: no document);
    - ``splits``: where it runs (``"test"``; add ``"val"`` when its metrics can drive
      selection: they are then logged ``val_``-prefixed from the validation pass);
    - ``default``: runs without being named in ``eval.summaries`` (else only when named);
    - ``needs_model``: reads ``SummaryContext.model`` (runs on the test split only);
    - ``families``: metric family -> the fields its keys nest (``{"group_acc": ("attribute",
      "group")}`` for ``group_acc/<attr>/<group>``, ``{"auc_acc": ()}`` for a bare
      ``auc_acc``); every key it returns, in ``entry_metrics`` or ``metrics``, is
      ``<family>`` followed by exactly its fields, ``/``-separated;

    - ``TEST_OPTIONS``: the options the contract checks (``distfair.testing``) run it with,
      when it needs some (its required options; entries of the checks' toy grid);

    and implement :meth:`summarize`; optionally :meth:`entries_needed`, :meth:`check_options`,
    :meth:`figures` and :meth:`view`.
    """
    name: ClassVar[str]
    artifact: ClassVar[str | None] = None
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    families: ClassVar[dict[str, tuple[str, ...]]] = {}
    TEST_OPTIONS: ClassVar[dict[str, Any]] = {}

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        raise NotImplementedError

    @classmethod
    def check_options(cls, options: dict, entry_names: list[str]) -> list[tuple[str, str]]:
        """Problems with this summary's options as (key below ``eval.summaries.<name>``,
        message); empty when they are valid. Default: no options accepted."""
        return [(key, "unknown option (this summary takes none)") for key in options]

    @classmethod
    def entries_needed(cls, options: dict) -> list[str]:
        """The ``eval.attacks`` entries the validation pass must evaluate for this summary
        (beyond the primary one). Default: none."""
        return []

    def figures(self, document: Any, class_names: list[str], title: str, outdir: Path) -> list[Path]:
        """PNG files drawn from ``document`` alone (what the artifact holds) into ``outdir``."""
        return []

    @classmethod
    def view(cls, document: Any) -> Any:
        """What a result exposes as ``result.<name>``, read from this summary's ``document``
        (None when it produced none). Default: the document itself."""
        return document


class SummaryDocuments:
    """Read access to ``self.summaries`` (summary name -> {"artifact", "document"}), shared by
    the evaluation result and the seed result. ``result.<name>`` is what the registered summary
    ``<name>`` reads back from its document (:meth:`Summary.view`: ``result.subgroups``,
    ``result.target_success``), so a new summary needs no attribute here."""
    summaries: dict[str, dict]

    def document(self, summary: str):
        """The JSON document of one summary (None if it produced none)."""
        return (self.summaries.get(summary) or {}).get("document")

    def __getattr__(self, name: str):
        # only reached for names that are not attributes: a registered summary's view
        if name.startswith("_") or name == "summaries":
            raise AttributeError(name)
        from distfair.evaluation.summaries import SUMMARIES   # the registry imports this module

        if name not in SUMMARIES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r} "
                                 f"(nor is it a registered summary: {', '.join(SUMMARIES)})")
        return SUMMARIES[name].view(self.document(name))
