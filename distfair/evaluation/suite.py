"""The evaluation suite of one trained model: :func:`final_evaluation` on the test set, clean
and under every ``eval.attacks`` entry, with per-sample flags, ensembles' stages, targeted
modes, subgroup fairness (``subgroups.py``) and the self-checks (``checks.py``); and
:func:`validation_evaluation`, the same metric set on the validation split (what sweeps select
on). Plain PyTorch, DDP-aware (sharded over ranks by ``predict.py``, merged by all-reduce), no
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
from torch.utils.data import DataLoader

from distfair.attacks import Attack, build_attack
from distfair.attacks.autoattack import pin_versions
from distfair.data import DataBundle
from distfair.evaluation import checks
from distfair.evaluation.predict import Predictions, Predictor, predict_dataset
from distfair.evaluation.subgroups import METADATA, metric_safe, resolve_groupings, subgroup_report
from distfair.metrics import fairness_metrics
from distfair.seeding import generator

FLAGS_NAME = "robust_flags.npz"
TAG_VERSION = "distfair.autoattack_version."
TAG_ERROR = "distfair.eval_error."
#: keys of an ``eval.attacks`` entry that are not options of the attack itself
ENTRY_KEYS = ("name", "attack", "target")


@dataclass
class FinalEvaluation:
    per_eval: dict[str, dict]                      # "clean" and each entry name -> metric dict
    confusion: dict[str, list[list[int]]]
    per_class_acc: dict[str, list[float | None]]
    subgroups: dict[str, dict]                     # evaluation name -> subgroup report (JSON-able)
    target_success: dict[str, list[list[float | None]]] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    flags_path: str | None = None
    eval_time_s: float = 0.0
    #: evaluation name -> "ExceptionType: message" for an evaluation that failed (its metrics are
    #: absent: ``per_eval[name] == {}``); the other evaluations and the artifacts still land
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


def black_box_stages(attack: Attack) -> set[str]:
    """Labels of an ensemble's black-box stages (empty for a plain attack)."""
    marked = getattr(attack, "black_box_stages", None)
    if callable(marked):
        marked = marked()
    if isinstance(marked, dict):
        return {k for k, v in marked.items() if v}
    return set(marked or ())


def _success_rates(success: torch.Tensor, labels: torch.Tensor, k: int) -> list[list[float | None]]:
    per_class = torch.bincount(labels, minlength=k).double()
    rates = success.double() / per_class.clamp(min=1)[:, None]
    return [[None if i == j or per_class[i] == 0 else float(rates[i, j]) for j in range(k)] for i in range(k)]


def _self_checks(model, data: DataBundle, results: dict[str, Predictions], attacks: dict[str, Attack],
                 per_eval: dict[str, dict], device, batch_size: int) -> list[dict]:
    found = checks.robust_above_clean(per_eval["clean"]["acc"],
                                      {n: per_eval[n]["acc"] for n in attacks})
    if attacks:
        x, y = next(iter(DataLoader(data.test, batch_size=batch_size, shuffle=False)))
        found += checks.zero_gradients(checks.zero_gradient_fraction(model, x.to(device), y.to(device)), len(y))
    white, black = [], {}
    for name, attack in attacks.items():
        pred = results[name]
        if attack.black_box:
            black[name] = pred.correct
            continue
        bb = black_box_stages(attack)
        stages = list(pred.stages.items())
        for i, (label, flags) in enumerate(stages):
            if label in bb:     # broken at this stage = robust before it, not after it
                before = stages[i - 1][1] if i else results["clean"].correct
                black[f"{name}:{label}"] = ~(before & ~flags)
            else:
                white.append(flags)
        if not bb:
            white.append(pred.correct)
    found += checks.black_box_beats_white_box(results["clean"].correct, white, black)
    return found


@dataclass
class EvaluationMetrics:
    """What one evaluation (clean or one ``eval.attacks`` entry) reports, from its predictions."""
    metrics: dict[str, float | None]               # fairness metrics, subgroup metrics, success, stages
    counts: torch.Tensor                           # K×K confusion counts
    per_class_acc: list[float | None]
    subgroups: dict                                # the JSON subgroup report
    target_success: list[list[float | None]] | None = None   # "every target" entries: K×K rates
    abstained: list[int] | None = None             # (K,) abstentions per true class (can_abstain only)
    per_class_rejection: list[float | None] | None = None


def evaluation_metrics(pred: Predictions, k: int, groupings: list, class_names: list[str],
                       target: int | str | None, *, clean: bool = False) -> EvaluationMetrics:
    """Metrics of one evaluation from its per-sample predictions (shared by the test-set
    evaluation and the end-of-training validation pass, so both report the same things).

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
    as ``acc``, for a fixed target), ``group_rejection/<attr>/<group>``, and on the clean
    evaluation (``clean=True``) ``false_rejection_rate``: the fraction of clean samples
    rejected (every clean sample is benign, so every rejection of one is false: the speech
    paper's FPR of a rejection defense at its operating point, §4.3). The per-class
    rejection rates go to ``per_class_rejection`` (an artifact, as ``per_class_acc``).
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
    if abstained is not None and clean:
        metrics["false_rejection_rate"] = metrics["rejection_rate"]
    per_class = metrics.pop("per_class_acc")
    per_class_rejection = metrics.pop("per_class_rejection", None)
    group_metrics, report = subgroup_report(
        groupings, counts.numpy(), pred.correct.numpy(), class_names, included=included,
        abstained=None if abstained is None else abstained.numpy(),
        rejected=None if abstained is None else pred.abstained.numpy())
    metrics.update(group_metrics)
    success = None
    if pred.target_success is not None:
        success = _success_rates(pred.target_success, pred.labels, k)
        metrics["target_success_rate"] = float(pred.target_success.sum()) / float(len(pred.labels) * (k - 1))
    elif isinstance(target, int):
        aimed = pred.labels != target
        metrics["target_success_rate"] = float((pred.preds[aimed] == target).double().mean()) \
            if aimed.any() else None
    for label, flags in pred.stages.items():
        metrics[f"stage_acc/{label}"] = float(flags.double().mean())
    return EvaluationMetrics(metrics, counts, per_class, report, success,
                             None if abstained is None else abstained.tolist(), per_class_rejection)


def validation_evaluation(model: torch.nn.Module, data: DataBundle, eval_cfg: dict, seed: int, *,
                          device: torch.device, batch_size: int, rank: int = 0, world: int = 1,
                          log: Callable[[str], None] = lambda m: None,
                          predictor: Predictor | None = None) -> dict[str, dict] | None:
    """The end-of-training validation pass that sweeps select on (methods.md "Conventions":
    selection uses the validation split carved from the training data, never the test set).

    Evaluates ``data.val`` clean and under the *primary* evaluation attack (the first
    ``eval.attacks`` entry, with its target mode), with the full metric set of the test-set
    evaluation and the subgroup metrics of ``eval.subgroups`` (class-level attributes, and
    per-sample attributes the dataset gives for its validation samples; others are skipped
    with a log line). No flags, figures or self-checks. Returns ``{"clean": metrics,
    <primary name>: metrics}`` on rank 0 and None elsewhere; every rank must call it.
    ``predictor``: the predict step (the defense's; default arg-max).
    """
    k = data.num_classes
    results = {}
    try:
        results["clean"] = predict_dataset(model, data.val, k, device=device, batch_size=batch_size,
                                           rank=rank, world=world, predictor=predictor)
    except Exception as err:
        log(f"seed {seed}: validation: the clean pass failed, its metrics are skipped: {type(err).__name__}: {err}")
    targets: dict[str, int | str | None] = {}
    for i, entry in enumerate(eval_cfg["attacks"][:1]):
        try:                       # a failing attack never loses the seed (it fails alike on every rank)
            attack, targets[entry["name"]] = build_eval_attack(entry, data)
            pin_versions(attack, model)
            results[entry["name"]] = predict_dataset(
                model, data.val, k, device=device, batch_size=batch_size, attack=attack,
                target=targets[entry["name"]], generator=generator(seed, "val-final-attack", i, rank, device=device),
                rank=rank, world=world, predictor=predictor)
        except Exception as err:
            log(f"seed {seed}: validation: {entry['name']!r} failed, its validation metrics are skipped: "
                f"{type(err).__name__}: {err}")
    if rank != 0:
        return None
    spec = dict(eval_cfg.get("subgroups") or {})
    for attribute, source in list(spec.items()):
        if source == METADATA and attribute not in data.class_attributes and attribute not in data.val_attributes:
            log(f"seed {seed}: validation: subgroup attribute {attribute!r} has no values for the validation "
                "samples; its validation metrics are skipped")
            del spec[attribute]
    view = dataclasses.replace(data, test=data.val, test_attributes=data.val_attributes)
    try:
        groupings = resolve_groupings(spec, view)
    except ValueError as err:      # never lose a trained seed to a subgroup definition
        log(f"seed {seed}: validation: subgroups skipped: {err}")
        groupings = []
    out = {name: {} for name in ["clean", *(e["name"] for e in eval_cfg["attacks"][:1])]}   # {}: failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, pred in results.items():
            try:
                out[name] = evaluation_metrics(pred, k, groupings, list(data.class_names), targets.get(name),
                                               clean=name == "clean").metrics
            except Exception as err:
                log(f"seed {seed}: validation: metrics of {name!r} failed, skipped: {type(err).__name__}: {err}")
    for w in caught:
        log(f"seed {seed}: validation warning: {w.message}")
    return out


def final_evaluation(model: torch.nn.Module, data: DataBundle, eval_cfg: dict, seed: int, *, workdir: Path,
                     device: torch.device, batch_size: int, rank: int = 0, world: int = 1,
                     log: Callable[[str], None] = lambda m: None,
                     predictor: Predictor | None = None) -> FinalEvaluation | None:
    """Evaluate ``model`` on ``data.test``; returns the result on rank 0, None elsewhere.

    A trained seed is never lost to one evaluation: an exception inside an evaluation (its
    attack, on any rank: ``predict_dataset`` raises it on every rank alike, or its metrics
    on rank 0) is recorded in ``errors`` and as a ``distfair.eval_error.<name>`` tag, that
    evaluation's metrics are left out (``per_eval[name] == {}``), and the other evaluations,
    the self-checks and the flags still land. Every AutoAttack runs one version, fixed once
    per evaluation (``pin_versions``) and recorded as a ``distfair.autoattack_version.<name>``
    tag (a member of an ensemble: ``<name>.<member>``).

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
    per_eval, confusion, per_class, reports, success, abstentions = {}, {}, {}, {}, {}, {}
    with warnings.catch_warnings(record=True) as caught:   # absent test classes: surface once, in the log
        warnings.simplefilter("always")
        for name, pred in list(results.items()):
            try:
                one = evaluation_metrics(pred, k, groupings, list(data.class_names), targets.get(name),
                                         clean=name == "clean")
            except Exception as err:
                failed(name, err)
                del results[name]
                attacks.pop(name, None)
                continue
            per_eval[name], confusion[name], per_class[name], reports[name] = \
                one.metrics, one.counts.tolist(), one.per_class_acc, one.subgroups
            if one.target_success is not None:
                success[name] = one.target_success
            if one.abstained is not None:
                abstentions[name] = {"abstained": one.abstained, "per_class_rejection": one.per_class_rejection}
    for w in caught:
        log(f"seed {seed}: warning: {w.message}")
    for name in ["clean", *(e["name"] for e in eval_cfg["attacks"])]:
        per_eval.setdefault(name, {})              # a failed evaluation: no metrics, its error recorded

    found = []
    if "clean" in results:                         # the checks compare against the clean evaluation
        try:
            found = _self_checks(model, data, results, attacks, per_eval, device, batch_size)
        except Exception as err:
            failed("self_checks", err)
    for f in found:
        log(f"seed {seed}: self-check warning: {f['message']}")
    flags = {"labels": next(iter(results.values())).labels.numpy()} if results else {}
    for name, pred in results.items():
        flags[name] = pred.correct.numpy()
        flags.update({f"{name}:{label}": v.numpy() for label, v in pred.stages.items()})
        flags[f"preds/{name}"] = pred.preds.numpy()
        if pred.scores is not None:
            flags[f"scores/{name}"] = pred.scores.numpy()
    flags_path = Path(workdir) / FLAGS_NAME
    np.savez_compressed(flags_path, **flags)
    tags.update({TAG_ERROR + metric_safe(name): message[:5000] for name, message in errors.items()})
    return FinalEvaluation(per_eval=per_eval, confusion=confusion, per_class_acc=per_class, subgroups=reports,
                           target_success=success, checks=found, flags_path=str(flags_path),
                           eval_time_s=time.perf_counter() - t0, errors=errors, tags=tags, abstentions=abstentions)
