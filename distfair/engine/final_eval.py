"""The final evaluation of one seed on the test set: clean and under every ``eval.attacks``
entry, with per-sample flags, ensembles' stages, targeted modes, subgroup fairness and the
self-checks. Plain PyTorch, DDP-aware (sharded over ranks, merged by all-reduce), no Ray, no
MLflow.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from distfair.attacks import Attack, build_attack
from distfair.data import DataBundle
from distfair.engine import checks
from distfair.engine.evaluate import Predictions, predict_dataset
from distfair.engine.seeding import generator
from distfair.engine.subgroups import resolve_groupings, subgroup_report
from distfair.metrics import fairness_metrics

FLAGS_NAME = "robust_flags.npz"
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


def final_evaluation(model: torch.nn.Module, data: DataBundle, eval_cfg: dict, seed: int, *, workdir: Path,
                     device: torch.device, batch_size: int, rank: int = 0, world: int = 1,
                     log: Callable[[str], None] = lambda m: None) -> FinalEvaluation | None:
    """Evaluate ``model`` on ``data.test``; returns the result on rank 0, None elsewhere."""
    t0 = time.perf_counter()
    k = data.num_classes
    results: dict[str, Predictions] = {"clean": predict_dataset(model, data.test, k, device=device,
                                                                batch_size=batch_size, rank=rank, world=world)}
    attacks: dict[str, Attack] = {}
    targets: dict[str, int | str | None] = {}      # resolved: None, a class index or "every"
    for i, entry in enumerate(eval_cfg["attacks"]):
        attack, target = build_eval_attack(entry, data)
        attacks[entry["name"]], targets[entry["name"]] = attack, target
        t1 = time.perf_counter()
        results[entry["name"]] = predict_dataset(
            model, data.test, k, device=device, batch_size=batch_size, attack=attack, target=target,
            generator=generator(seed, "eval-attack", i, rank, device=device), rank=rank, world=world)
        log(f"seed {seed}: evaluated {entry['name']} ({time.perf_counter() - t1:.1f}s)")
    if rank != 0:
        return None

    groupings = resolve_groupings(eval_cfg.get("subgroups") or {}, data)
    per_eval, confusion, per_class, reports, success = {}, {}, {}, {}, {}
    with warnings.catch_warnings(record=True) as caught:   # absent test classes: surface once, in the log
        warnings.simplefilter("always")
        for name, pred in results.items():
            counts = pred.counts(k)
            metrics = fairness_metrics(counts)
            per_class[name] = metrics.pop("per_class_acc")
            group_metrics, reports[name] = subgroup_report(groupings, counts.numpy(), pred.correct.numpy(),
                                                           list(data.class_names))
            metrics.update(group_metrics)
            target = targets.get(name)
            if pred.target_success is not None:
                success[name] = _success_rates(pred.target_success, pred.labels, k)
                metrics["target_success_rate"] = float(pred.target_success.sum()) / float(len(pred.labels) * (k - 1))
            elif isinstance(target, int):
                cls = target
                aimed = pred.labels != cls
                metrics["target_success_rate"] = float((pred.preds[aimed] == cls).double().mean()) \
                    if aimed.any() else None
            for label, flags in pred.stages.items():
                metrics[f"stage_acc/{label}"] = float(flags.double().mean())
            per_eval[name], confusion[name] = metrics, counts.tolist()
    for w in caught:
        log(f"seed {seed}: warning: {w.message}")

    found = _self_checks(model, data, results, attacks, per_eval, device, batch_size)
    for f in found:
        log(f"seed {seed}: self-check warning: {f['message']}")
    flags = {"labels": results["clean"].labels.numpy()}
    for name, pred in results.items():
        flags[name] = pred.correct.numpy()
        flags.update({f"{name}:{label}": v.numpy() for label, v in pred.stages.items()})
    flags_path = Path(workdir) / FLAGS_NAME
    np.savez_compressed(flags_path, **flags)
    return FinalEvaluation(per_eval=per_eval, confusion=confusion, per_class_acc=per_class, subgroups=reports,
                           target_success=success, checks=found, flags_path=str(flags_path),
                           eval_time_s=time.perf_counter() - t0)
