"""Per-sample prediction and confusion counts, clean and under attack, sharded over DDP ranks.

The lowest level of ``distfair.evaluation``: the test-set suite (``suite.py``), the per-epoch
validation metrics of the engine and SpecNorm's per-epoch confusion matrix all count here.

Each rank evaluates the samples ``rank, rank + world, ...`` (no padding, so no sample counts
twice) and the K×K count matrices are summed with all-reduce. Batches stream: memory does
not grow with the size of the evaluation set.

Every rank makes the same collective calls whatever its shard (an empty shard included, and
a rank whose attack raised): ``predict_dataset`` first gathers each rank's outcome (its error,
its ensemble stage labels), raises the same ``EvaluationError`` on every rank if any rank
failed, and only then all-reduces one tensor per stage of the agreed list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from distfair.attacks import Attack
from distfair.metrics import confusion_matrix


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


@torch.no_grad()
def _predict(model, x):
    return model(x).argmax(dim=1)


def confusion_counts(model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
                     batch_size: int, attack: Attack | None = None, generator: torch.Generator | None = None,
                     rank: int = 0, world: int = 1, soft: bool = False):
    """K×K counts (rows true, columns predicted) over ``dataset``, summed over all ranks.

    The model is put in eval mode for the forward passes and its previous mode restored.
    With ``soft=True`` returns ``(counts, soft_sums)``: ``soft_sums[i]`` is the sum of the
    softmax vectors of the (attacked) samples of true class ``i`` (float64), from the same
    forward pass, so ``soft_sums / counts.sum(1)`` is Sy-FAR's soft confusion matrix (§4.2)
    of the whole dataset.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    soft_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device) if soft else None
    try:
        for x, y in DataLoader(shard(dataset, rank, world), batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            if attack is not None:
                x = attack(model, x, y, generator=generator)
            with torch.no_grad():
                logits = model(x)
            counts += confusion_matrix(y, logits.argmax(dim=1), num_classes)
            if soft_sums is not None:
                soft_sums.index_add_(0, y, logits.double().softmax(dim=1))
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        if soft_sums is not None:
            dist.all_reduce(soft_sums, op=dist.ReduceOp.SUM)
    return counts.cpu() if soft_sums is None else (counts.cpu(), soft_sums.cpu())


# ------------------------------------------------------------------ per-sample evaluation
TARGET_SPECS = ("random", "every")


class EvaluationError(RuntimeError):
    """An evaluation failed on at least one DDP rank; raised on every rank alike."""


@dataclass
class Predictions:
    """Per-sample outcome of one evaluation over a whole dataset (every rank's shard merged).

    ``labels``/``preds``: (N,) true classes and final predictions. ``stages``: for an
    ensemble (an attack with ``run_stages``), member label -> (N,) bool, still robust after
    that member (cumulative). ``target_success``: "every target" mode only, (K, K) counts of
    samples of true class i that the attack aimed at class t drove to t.
    """
    labels: torch.Tensor
    preds: torch.Tensor
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    target_success: torch.Tensor | None = None

    def counts(self, num_classes: int) -> torch.Tensor:
        return confusion_matrix(self.labels, self.preds, num_classes)

    @property
    def correct(self) -> torch.Tensor:
        return self.preds == self.labels


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit of the true class minus the largest other logit (< 0: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def _every_target(model, attack: Attack, x, y, num_classes: int, generator, success: torch.Tensor):
    """Attack toward each wrong class in turn; return the worst case per sample (the
    adversarial example with the lowest true-class margin) and count targeted successes."""
    worst_margin = torch.full(y.shape, float("inf"), device=y.device)
    worst_pred = y.clone()
    for shift in range(1, num_classes):
        target = (y + shift) % num_classes
        x_adv = attack(model, x, y, target=target, generator=generator)
        with torch.no_grad():
            logits = model(x_adv)
        pred, margin = logits.argmax(dim=1), _margin(logits, y)
        hit = pred == target
        success.index_put_((y[hit], target[hit]), torch.ones_like(y[hit]), accumulate=True)
        better = margin < worst_margin
        worst_margin = torch.where(better, margin, worst_margin)
        worst_pred = torch.where(better, pred, worst_pred)
    return worst_pred


def _fixed_target(model, attack: Attack, x, y, target_class: int, generator):
    """Targeted toward one class; samples of that class are left clean (nothing to aim at)."""
    pred = _predict(model, x)
    aim = y != target_class
    if aim.any():
        target = torch.full_like(y[aim], target_class)
        pred[aim] = _predict(model, attack(model, x[aim], y[aim], target=target, generator=generator))
    return pred


def predict_dataset(model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
                    batch_size: int, attack: Attack | None = None, target: int | str | None = None,
                    generator: torch.Generator | None = None, rank: int = 0, world: int = 1) -> Predictions:
    """Per-sample predictions over ``dataset``, clean or under ``attack``, merged over ranks.

    ``target``: None (the attack's own mode), an int class index (targeted toward that
    class; its own samples stay clean), or "every" (each wrong class in turn, the worst case
    per sample kept, targeted success counted in ``target_success``). "random" is an
    attack option (``target_mode``), not handled here. Batches stream: besides the model,
    memory holds one batch and a few (N,) integer vectors.
    """
    if isinstance(target, str) and target != "every":
        raise ValueError(f"target must be None, a class index or 'every', got {target!r}")
    n = len(dataset)
    indices = torch.arange(rank, n, world)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    preds = torch.zeros(n, dtype=torch.long, device=device)
    stages: dict[str, torch.Tensor] = {}
    success = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device) if target == "every" else None
    was_training = model.training
    model.eval()
    start = 0
    error: BaseException | None = None
    try:
        for x, y in DataLoader(shard(dataset, rank, world), batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            at = indices[start:start + len(y)].to(device)
            start += len(y)
            if attack is None:
                pred = _predict(model, x)
            elif target == "every":
                pred = _every_target(model, attack, x, y, num_classes, generator, success)
            elif target is not None:
                pred = _fixed_target(model, attack, x, y, int(target), generator)
            elif hasattr(attack, "run_stages"):
                x_adv, batch_stages = attack.run_stages(model, x, y, generator=generator)
                pred = _predict(model, x_adv)
                for label, flags in batch_stages.items():
                    stages.setdefault(label, torch.zeros(n, dtype=torch.long, device=device))[at] = \
                        flags.to(device=device, dtype=torch.long)
            else:
                pred = _predict(model, attack(model, x, y, generator=generator))
            labels[at] = y + 1           # +1: the all-reduce below sums the ranks' disjoint shards
            preds[at] = pred + 1
    except Exception as err:         # other ranks wait in the collectives below: tell them first
        if world == 1:
            raise
        error = err
    finally:
        model.train(was_training)
    if world > 1:
        stages = _agree_on_stages(stages, error, n, device, rank, world)
        for tensor in (labels, preds, *stages.values(), *([success] if success is not None else [])):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return Predictions(labels=(labels - 1).cpu(), preds=(preds - 1).cpu(),
                       stages={k: v.cpu().bool() for k, v in stages.items()},
                       target_success=None if success is None else success.cpu())


def _agree_on_stages(stages: dict[str, torch.Tensor], error: BaseException | None, n: int, device, rank: int,
                     world: int) -> dict[str, torch.Tensor]:
    """One collective every rank makes, empty shard or not: gather (error, stage labels) from
    all ranks; raise ``EvaluationError`` on every rank if one failed or if ranks with samples
    ran different stages; else return ``stages`` completed (zeros) to the agreed labels, in
    the same order on every rank, so the all-reduces that follow match one to one."""
    mine = (None if error is None else f"rank {rank}: {type(error).__name__}: {error}", list(stages))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    failures = [message for message, _ in gathered if message is not None]
    if failures:
        raise EvaluationError("; ".join(failures)) from error
    ran = [labels for labels in (labels for _, labels in gathered) if labels]
    if any(labels != ran[0] for labels in ran):
        raise EvaluationError(f"ranks ran different ensemble stages: {[labels for _, labels in gathered]}")
    return {label: stages.get(label, torch.zeros(n, dtype=torch.long, device=device))
            for label in (ran[0] if ran else [])}
