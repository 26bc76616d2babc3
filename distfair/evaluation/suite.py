"""The evaluation suite of one trained model: :func:`final_evaluation` on the test set, clean
and under every ``eval.attacks`` entry, with per-sample flags, ensembles' stages and targeted
modes; and :func:`validation_evaluation`, the same metric set on the validation split (what
sweeps select on). Each evaluation gives its per-sample records and core metrics
(:func:`entry_result`); everything that spans evaluations or groups (subgroup fairness,
targeted success, the self-checks, AUC_acc over a budget grid) is a summary plug-in of
``summaries/``, run over all of them. Plain PyTorch, DDP-aware (sharded over ranks by ``predict.py``, merged by all-reduce), no
Ray, no MLflow. The engine (``distfair.engine.train``) calls it at the end of training.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distfair.attacks import Attack, build_attack
from distfair.attacks.autoattack import pin_versions
from distfair.data import DataBundle
from distfair.evaluation.predict import Predictions, Predictor, predict_dataset
from distfair.evaluation.subgroup_spec import needed_attributes
from distfair.evaluation.subgroups import metric_safe, resolve_groupings
from distfair.evaluation.summaries import (EntryResult, SummaryContext, SummaryDocuments, run_summaries,
                                           validation_entries)
from distfair.metrics import fairness_metrics
from distfair.seeding import generator

FLAGS_NAME = "robust_flags.npz"
TAG_VERSION = "distfair.autoattack_version."
TAG_ERROR = "distfair.eval_error."
#: keys of an ``eval.attacks`` entry that are not options of the attack itself
ENTRY_KEYS = ("name", "attack", "target")


@dataclass
class FinalEvaluation(SummaryDocuments):
    per_eval: dict[str, dict]                      # "clean" and each entry name -> metric dict
    confusion: dict[str, list[list[int]]]
    per_class_acc: dict[str, list[float | None]]
    #: the summaries' metrics across evaluations (``auc_acc``, ``defense_parity/<attr>``, ...)
    metrics: dict[str, float | None] = field(default_factory=dict)
    #: summary name -> {"artifact": file name, "document": JSON} (``summaries/``)
    summaries: dict[str, dict] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)          # every summary's findings
    flags_path: str | None = None
    eval_time_s: float = 0.0
    #: evaluation name -> "ExceptionType: message" for an evaluation that failed (its metrics are
    #: absent: ``per_eval[name] == {}``) or a summary that failed (``summaries.<name>``); the other
    #: evaluations and the artifacts still land
    errors: dict[str, str] = field(default_factory=dict)
    #: run tags for the seed run: ``distfair.autoattack_version.<entry>[.<member>]`` (the
    #: version every batch and rank ran) and ``distfair.eval_error.<entry>`` (see ``errors``)
    tags: dict[str, str] = field(default_factory=dict)
    #: evaluations whose predictor can abstain only: name -> {"abstained": (K,) abstentions per
    #: true class (not in ``confusion``), "per_class_rejection": (K,) rates, None if absent}
    abstentions: dict[str, dict] = field(default_factory=dict)


def build_eval_attack(entry: dict, data: DataBundle) -> tuple[Attack, int | str | None]:
    """The attack of one ``eval.attacks`` entry and its evaluation-level target
    (None, a class index, or "every"); ``target: random`` becomes the attack's target_mode."""
    options = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    target = entry.get("target")
    if target == "random":
        options["target_mode"], target = "random", None
    elif isinstance(target, str) and target != "every":
        names = list(data.class_names)
        if target not in names:
            raise ValueError(f"eval.attacks: entry {entry['name']!r}: target {target!r} is not a class name "
                             f"of the dataset (classes: {', '.join(names[:20])})")
        target = names.index(target)
    if isinstance(target, int) and not 0 <= target < data.num_classes:
        raise ValueError(f"eval.attacks: entry {entry['name']!r}: target class {target} is out of range "
                         f"0..{data.num_classes - 1}")
    return build_attack(entry["attack"], bounds=data.bounds, **options), target


def entry_result(name: str, pred: Predictions, k: int, target: int | str | None, *, spec: dict | None = None,
                 attack: Attack | None = None) -> EntryResult:
    """The records and core metrics of one evaluation (clean when ``name == "clean"``) from its
    per-sample predictions: what every summary reads (``summaries/_base.py``).

    A fixed target class (``target`` an int) is not attacked: its samples are left clean, so
    their row would be clean accuracy among attacked rows. That row is treated as absent
    (zeroed in ``counts``, the usual absent-class ``UserWarning``): it is left out of every
    per-class statistic (Sy-FAR §5 metrics: worst-class, gap, NSD, symmetry, target shares),
    of the subgroup metrics (§7) and of the confusion matrix returned. ``acc`` stays the
    fraction of all samples correct (the target class's clean ones included), the mean of
    the evaluation's per-sample flags.

    Abstentions (``pred.can_abstain``, methods.md "Metrics"): an abstained sample is in no
    cell of ``counts``; it counts as not correct in ``acc``, in ``per_class_acc`` (correct /
    all samples of the class) and in the subgroup accuracies. Added keys, only then:
    ``rejection_rate`` (fraction of the evaluation's samples abstained on; of all samples,
    as ``acc``, for a fixed target) and on the clean evaluation ``false_rejection_rate``:
    the fraction of clean samples rejected (every clean sample is benign, so every rejection
    of one is false: the speech paper's FPR of a rejection defense at its operating point,
    §4.3). The per-class rejection rates go to ``per_class_rejection`` (an artifact, as
    ``per_class_acc``). Ensembles add ``stage_acc/<member>``.
    """
    counts = pred.counts(k)
    abstained = pred.abstained_counts(k) if pred.can_abstain else None
    included = None
    if isinstance(target, int):
        included = (pred.labels != target).numpy()
        counts[target] = 0
        if abstained is not None:
            abstained[target] = 0
    metrics = fairness_metrics(counts, abstained)
    if included is not None:
        metrics["acc"] = float(pred.correct.double().mean())
        if abstained is not None:
            metrics["rejection_rate"] = float(pred.abstained.double().mean())
    if abstained is not None and name == "clean":
        metrics["false_rejection_rate"] = metrics["rejection_rate"]
    per_class = metrics.pop("per_class_acc")
    per_class_rejection = metrics.pop("per_class_rejection", None)
    for label, flags in pred.stages.items():
        metrics[f"stage_acc/{label}"] = float(flags.double().mean())
    return EntryResult(name=name, spec=spec, target=target, predictions=pred, included=included, counts=counts,
                       abstained=abstained, metrics=metrics, per_class_acc=per_class,
                       per_class_rejection=per_class_rejection, attack=attack)


@dataclass
class EvaluationMetrics:
    """What one evaluation (clean or one ``eval.attacks`` entry) reports, from its predictions."""
    metrics: dict[str, float | None]               # core metrics + the summaries' metrics of this evaluation
    counts: torch.Tensor                           # K×K confusion counts
    per_class_acc: list[float | None]
    subgroups: dict                                # the JSON subgroup report
    target_success: list[list[float | None]] | None = None   # "every target" entries: K×K rates
    abstained: list[int] | None = None             # (K,) abstentions per true class (can_abstain only)
    per_class_rejection: list[float | None] | None = None


def evaluation_metrics(pred: Predictions, k: int, groupings: list, class_names: list[str],
                       target: int | str | None, *, clean: bool = False) -> EvaluationMetrics:
    """Everything one evaluation reports on its own: :func:`entry_result`'s core metrics plus
    the metrics the default summaries add to a single evaluation (subgroups, targeted
    success; not the self-checks, which need the model and the other evaluations)."""
    name = "clean" if clean else "evaluation"
    entry = entry_result(name, pred, k, target)
    ctx = SummaryContext(split="test", entries={name: entry}, groupings=groupings, class_names=list(class_names),
                         num_classes=k)

    def raise_it(_: str, err: Exception):
        raise err

    added, _, documents, _ = run_summaries(lambda options: dataclasses.replace(ctx, options=options), None, "test",
                                           failed=raise_it, with_model=False)
    success = documents.get("target_success", {}).get("document", {}).get("rates", {}).get(name)
    return EvaluationMetrics({**entry.metrics, **added.get(name, {})}, entry.counts, entry.per_class_acc,
                             documents["subgroups"]["document"][name], success,
                             None if entry.abstained is None else entry.abstained.tolist(),
                             entry.per_class_rejection)


def _entry_metrics(results: dict[str, Predictions], specs: dict[str, dict | None], targets: dict, attacks: dict,
                   k: int, failed: Callable[[str, Exception], None]) -> dict[str, EntryResult]:
    entries = {}
    for name, pred in results.items():
        try:
            entries[name] = entry_result(name, pred, k, targets.get(name), spec=specs.get(name),
                                         attack=attacks.get(name))
        except Exception as err:
            failed(name, err)
    return entries


@dataclass
class ValidationEvaluation:
    """The validation pass: ``per_eval`` ("clean", the primary entry and any entry a summary
    needs -> metric dict; ``{}`` for a failed one) and ``metrics``, the summaries' metrics
    across evaluations (logged ``val_``-prefixed)."""
    per_eval: dict[str, dict]
    metrics: dict[str, float | None] = field(default_factory=dict)


def validation_evaluation(model: torch.nn.Module, data: DataBundle, eval_cfg: dict, seed: int, *,
                          device: torch.device, batch_size: int, rank: int = 0, world: int = 1,
                          log: Callable[[str], None] = lambda m: None,
                          predictor: Predictor | None = None) -> ValidationEvaluation | None:
    """The end-of-training validation pass that sweeps select on (methods.md "Conventions":
    selection uses the validation split carved from the training data, never the test set).

    Evaluates ``data.val`` clean and under the *primary* evaluation attack (the first
    ``eval.attacks`` entry, with its target mode), plus the entries that the validation
    summaries need (``Summary.entries_needed``, e.g. an ``auc_acc`` grid), with the full
    metric set of the test-set evaluation and the subgroup metrics of ``eval.subgroups``
    (class-level attributes, and per-sample attributes the dataset gives for its validation
    samples; others are skipped with a log line), then the summaries that run on ``val``. No
    flags, figures, documents or self-checks. Returns the result on rank 0 and None
    elsewhere; every rank must call it. ``predictor``: the predict step (default arg-max).
    """
    k = data.num_classes
    results = {}
    try:
        results["clean"] = predict_dataset(model, data.val, k, device=device, batch_size=batch_size,
                                           rank=rank, world=world, predictor=predictor)
    except Exception as err:
        log(f"seed {seed}: validation: the clean pass failed, its metrics are skipped: {type(err).__name__}: {err}")
    configured = eval_cfg.get("summaries") or {}
    needed = validation_entries(configured)
    chosen = [(i, e) for i, e in enumerate(eval_cfg["attacks"]) if i == 0 or e["name"] in needed]
    targets: dict[str, int | str | None] = {}
    attacks: dict[str, Attack] = {}
    for i, entry in chosen:
        try:                       # a failing attack never loses the seed (it fails alike on every rank)
            attack, targets[entry["name"]] = build_eval_attack(entry, data)
            pin_versions(attack, model)
            results[entry["name"]] = predict_dataset(
                model, data.val, k, device=device, batch_size=batch_size, attack=attack,
                target=targets[entry["name"]], generator=generator(seed, "val-final-attack", i, rank, device=device),
                rank=rank, world=world, predictor=predictor)
            attacks[entry["name"]] = attack
        except Exception as err:
            log(f"seed {seed}: validation: {entry['name']!r} failed, its validation metrics are skipped: "
                f"{type(err).__name__}: {err}")
    if rank != 0:
        return None
    spec = dict(eval_cfg.get("subgroups") or {})
    for attribute, source in list(spec.items()):
        missing = [a for a in needed_attributes(attribute, source)
                   if a not in data.class_attributes and a not in data.val_attributes]
        if missing:
            log(f"seed {seed}: validation: subgroup attribute {', '.join(map(repr, missing))} has no values for "
                f"the validation samples; the validation metrics of eval.subgroups.{attribute} are skipped")
            del spec[attribute]
    view = dataclasses.replace(data, test=data.val, test_attributes=data.val_attributes)
    try:
        groupings = resolve_groupings(spec, view)
    except ValueError as err:      # never lose a trained seed to a subgroup definition
        log(f"seed {seed}: validation: subgroups skipped: {err}")
        groupings = []

    def failed(name: str, err: Exception) -> None:
        log(f"seed {seed}: validation: {name!r} failed, skipped: {type(err).__name__}: {err}")

    out = ValidationEvaluation({name: {} for name in ["clean", *(e["name"] for _, e in chosen)]})   # {}: failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = _entry_metrics(results, {e["name"]: e for _, e in chosen}, targets, attacks, k, failed)
        ctx = SummaryContext(split="val", entries=entries, groupings=groupings, class_names=list(data.class_names),
                             num_classes=k, attributes=dict(data.val_attributes or {}))
        added, out.metrics, _, _ = run_summaries(lambda options: dataclasses.replace(ctx, options=options),
                                                 configured, "val", failed=failed, with_model=False)
        for name, entry in entries.items():
            out.per_eval[name] = {**entry.metrics, **added.get(name, {})}
    for w in caught:
        log(f"seed {seed}: validation warning: {w.message}")
    return out


def final_evaluation(model: torch.nn.Module, data: DataBundle, eval_cfg: dict, seed: int, *, workdir: Path,
                     device: torch.device, batch_size: int, rank: int = 0, world: int = 1,
                     log: Callable[[str], None] = lambda m: None,
                     predictor: Predictor | None = None) -> FinalEvaluation | None:
    """Evaluate ``model`` on ``data.test``; returns the result on rank 0, None elsewhere.

    Each evaluation (clean, every ``eval.attacks`` entry) yields its per-sample records and
    core metrics (:func:`entry_result`); then every active summary (``summaries/``: the
    default ones and those named in ``eval.summaries``) reads them all and adds its metrics,
    document and findings.

    A trained seed is never lost to one evaluation: an exception inside an evaluation (its
    attack, on any rank: ``predict_dataset`` raises it on every rank alike, or its metrics
    on rank 0) or inside a summary is recorded in ``errors`` and as a
    ``distfair.eval_error.<name>`` tag (a summary: ``summaries.<name>``), that evaluation's
    metrics are left out (``per_eval[name] == {}``), and the other evaluations, summaries
    and the flags still land. Every AutoAttack runs one version, fixed once per evaluation
    (``pin_versions``) and recorded as a ``distfair.autoattack_version.<name>`` tag (a
    member of an ensemble: ``<name>.<member>``).

    Every prediction goes through ``predictor`` (the defense's ``Defense.predictor()``;
    default arg-max). The flags file holds, per evaluation, the correctness flags (``<name>``,
    an abstention is not correct), ``preds/<name>`` (-1 = abstained) and ``scores/<name>``
    (the predictor's per-sample scores, for rejection thresholds applied afterwards).
    """
    t0 = time.perf_counter()
    k = data.num_classes
    results: dict[str, Predictions] = {}
    attacks: dict[str, Attack] = {}
    targets: dict[str, int | str | None] = {}      # resolved: None, a class index or "every"
    errors: dict[str, str] = {}
    tags: dict[str, str] = {}

    def failed(name: str, err: Exception) -> None:
        errors[name] = f"{type(err).__name__}: {err}"
        log(f"seed {seed}: evaluation {name!r} failed (recorded on the run, the other evaluations go on): "
            f"{errors[name]}")

    try:
        results["clean"] = predict_dataset(model, data.test, k, device=device, batch_size=batch_size,
                                           rank=rank, world=world, predictor=predictor)
    except Exception as err:                        # the same on every rank (see predict_dataset)
        failed("clean", err)
    for i, entry in enumerate(eval_cfg["attacks"]):
        name = entry["name"]
        t1 = time.perf_counter()
        try:
            attack, target = build_eval_attack(entry, data)
            for label, version in pin_versions(attack, model).items():
                tags[TAG_VERSION + ".".join(metric_safe(p) for p in (name, label) if p)] = version
            pred = predict_dataset(
                model, data.test, k, device=device, batch_size=batch_size, attack=attack, target=target,
                generator=generator(seed, "eval-attack", i, rank, device=device), rank=rank, world=world,
                predictor=predictor)
        except Exception as err:                    # the same on every rank (see predict_dataset)
            failed(name, err)
            continue
        attacks[name], targets[name], results[name] = attack, target, pred
        log(f"seed {seed}: evaluated {name} ({time.perf_counter() - t1:.1f}s)")
    if rank != 0:
        return None

    try:
        groupings = resolve_groupings(eval_cfg.get("subgroups") or {}, data)
    except Exception as err:                       # every evaluation still gets its other metrics
        failed("subgroups", err)
        groupings = []
    with warnings.catch_warnings(record=True) as caught:   # absent test classes: surface once, in the log
        warnings.simplefilter("always")
        entries = _entry_metrics(results, {e["name"]: e for e in eval_cfg["attacks"]}, targets, attacks, k, failed)
        ctx = SummaryContext(split="test", entries=entries, groupings=groupings, class_names=list(data.class_names),
                             num_classes=k, model=model, data=data, device=device, batch_size=batch_size,
                             attributes=dict(data.test_attributes or {}))
        added, metrics, summaries, found = run_summaries(
            lambda options: dataclasses.replace(ctx, options=options), eval_cfg.get("summaries"), "test",
            failed=failed)
    for w in caught:
        log(f"seed {seed}: warning: {w.message}")
    per_eval = {name: {} for name in ["clean", *(e["name"] for e in eval_cfg["attacks"])]}   # {}: failed
    confusion, per_class, abstentions = {}, {}, {}
    for name, entry in entries.items():
        per_eval[name] = {**entry.metrics, **added.get(name, {})}
        confusion[name], per_class[name] = entry.counts.tolist(), entry.per_class_acc
        if entry.abstained is not None:
            abstentions[name] = {"abstained": entry.abstained.tolist(),
                                 "per_class_rejection": entry.per_class_rejection}
    for f in found:
        log(f"seed {seed}: self-check warning: {f['message']}")
    flags = {"labels": next(iter(results.values())).labels.numpy()} if results else {}
    for name in entries:
        pred = results[name]
        flags[name] = pred.correct.numpy()
        flags.update({f"{name}:{label}": v.numpy() for label, v in pred.stages.items()})
        flags[f"preds/{name}"] = pred.preds.numpy()
        if pred.scores is not None:
            flags[f"scores/{name}"] = pred.scores.numpy()
    flags_path = Path(workdir) / FLAGS_NAME
    np.savez_compressed(flags_path, **flags)
    tags.update({TAG_ERROR + metric_safe(name): message[:5000] for name, message in errors.items()})
    return FinalEvaluation(per_eval=per_eval, confusion=confusion, per_class_acc=per_class, metrics=metrics,
                           summaries=summaries, checks=found, flags_path=str(flags_path),
                           eval_time_s=time.perf_counter() - t0, errors=errors, tags=tags, abstentions=abstentions)
