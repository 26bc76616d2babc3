"""Per-sample prediction and confusion counts, clean and under attack, sharded over DDP ranks.

The lowest level of ``distfair.evaluation``: the test-set suite (``suite.py``), the per-epoch
validation metrics of the engine and SpecNorm's per-epoch confusion matrix all count here.

Each rank evaluates the samples ``rank, rank + world, ...`` (no padding, so no sample counts twice)
and the K×K count matrices are summed with all-reduce. Batches stream (memory does not grow with N).

Every evaluation classifies through one predict step, a :class:`Predictor`: per sample a class
or an abstention (:data:`ABSTAIN` = -1) and a score. The default, :class:`ArgmaxPredictor`,
never abstains; a defense supplies its own through ``Defense.predictor()`` (randomized
smoothing, neural rejection). An abstention is never a class: ``Predictions.counts`` is the
K×K matrix of the non-abstained samples and ``Predictions.abstained_counts`` counts the
abstentions per true class (methods.md "Metrics").

Every rank makes the same collective calls whatever its shard (an empty shard included, and a rank
whose attack raised): ``predict_dataset`` first gathers each rank's outcome (its error, its ensemble
stage labels), raises the same ``EvaluationError`` on every rank if any rank failed, and only then
all-reduces one tensor per stage of the agreed list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from distfair.attacks import Attack, StagedAttack, cw_margin
from distfair.evaluation.loudness import clip_power
from distfair.metrics import confusion_matrix


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


#: the prediction of a sample the predictor abstained on (rejected); never a class index
ABSTAIN = -1


#: threshold rules of a rejecting predictor: the sample is rejected at threshold t when
#: ``score > t`` ("above": a p-value, randomized smoothing) or ``score < t`` ("below": a
#: confidence, neural rejection)
REJECT_RULES = ("above", "below")


def rejected_at(scores, rule: str, thresholds) -> np.ndarray:
    """(T, N) bool: sample n rejected at threshold ``thresholds[t]`` under ``rule`` (see
    :data:`REJECT_RULES`); ``scores`` (N,), ``thresholds`` (T,). Strict comparisons: a score
    equal to the threshold is accepted (Cohen et al. 2019 PREDICT abstains when p > α)."""
    scores = np.asarray(scores, dtype=np.float64)[None, :]
    thresholds = np.asarray(thresholds, dtype=np.float64)[:, None]
    if rule == "above":
        return scores > thresholds
    if rule == "below":
        return scores < thresholds
    raise ValueError(f"unknown rejection rule {rule!r}; known: {', '.join(REJECT_RULES)}")


def thresholds_on_range(alphas, score_range: tuple[float, float] | None) -> np.ndarray:
    """The score thresholds of the positions ``alphas`` (T,): ``lo + α·(hi − lo)`` for a
    predictor's ``score_range = (lo, hi)`` (a raw score with no fixed scale, neural rejection's
    SVM decision value), the ``alphas`` themselves for None (a p-value's own [0, 1] scale)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if score_range is None:
        return alphas
    lo, hi = (float(v) for v in score_range)
    return lo + alphas * (hi - lo)


class Predictor:
    """The predict step every evaluation goes through.

    ``predictor(model, x) -> (pred, score)``: ``model`` in eval mode, ``x`` (B, ...) inputs
    (clean or adversarial); ``pred`` (B,) long, a class in ``[0, K)`` or :data:`ABSTAIN`;
    ``score`` (B,) float, the predictor's confidence in its decision (kept per sample, in
    float64, so a rejection threshold can be swept afterwards; its meaning is the predictor's own).
    ``can_abstain``: whether ``pred`` may hold :data:`ABSTAIN`; only then do the evaluations
    report abstention metrics (``rejection_rate``, ...), so a run whose predictor cannot
    abstain keeps exactly the metric set it had before abstention existed.
    ``reject_rule`` / ``threshold``: a predictor that rejects by thresholding its score sets
    the rule (:data:`REJECT_RULES`) and its operating threshold; then ``pred`` is
    :data:`ABSTAIN` exactly where ``rejected_at(score, reject_rule, [threshold])`` and the
    rejection summaries sweep other thresholds over the stored scores (speech paper §3 Eq. 2).
    ``score_range``: None when those thresholds are on the score's own scale (a p-value); else
    (lo, hi), the range (fixed before the test set is seen) that the summaries' grid α is mapped
    onto, threshold ``lo + α·(hi − lo)`` (:func:`thresholds_on_range`).
    :meth:`attack_model`: the module evaluation attacks differentiate (default the model itself; a
    randomised predictor returns its EOT form). Called under ``torch.no_grad()``; keeps the model's mode.
    """
    can_abstain: bool = False
    reject_rule: str | None = None
    threshold: float | None = None
    score_range: tuple[float, float] | None = None
    noise_sigma: float | None = None        # std of the noise it adds to its input (randomized smoothing)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def attack_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """What white-box evaluation attacks differentiate: ``model`` for a deterministic
        predictor; a randomised one (randomized smoothing) returns an expectation-over-
        transformation wrapper, so attacks see the classifier the predictor actually uses."""
        return model


class ArgmaxPredictor(Predictor):
    """The default: the arg-max of the logits, score the largest softmax probability."""
    can_abstain = False

    def __call__(self, model, x):
        return self.from_logits(model(x))

    @staticmethod
    def from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = logits.argmax(dim=1)
        return pred, logits.float().softmax(dim=1).gather(1, pred[:, None]).squeeze(1)


ARGMAX = ArgmaxPredictor()


@torch.no_grad()
def predict(predictor: Predictor | None, model, x, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``predictor(model, x)`` (the default arg-max for None), with its output checked:
    (B,) integer preds in ``[0, num_classes)`` or :data:`ABSTAIN` (only if it can abstain)
    and (B,) float scores; ValueError otherwise."""
    predictor = ARGMAX if predictor is None else predictor
    pred, score = predictor(model, x)
    n = x.shape[0]
    if pred.shape != (n,) or pred.is_floating_point() or pred.dtype == torch.bool:
        raise ValueError(f"predictor {type(predictor).__name__}: preds must be a ({n},) integer tensor, got "
                         f"{tuple(pred.shape)} {pred.dtype}")
    if score.shape != (n,) or not score.is_floating_point():
        raise ValueError(f"predictor {type(predictor).__name__}: scores must be a ({n},) float tensor, got "
                         f"{tuple(score.shape)} {score.dtype}")
    if n:
        low = ABSTAIN if getattr(predictor, "can_abstain", False) else 0
        high = num_classes if num_classes is not None else int(pred.max()) + 1
        if int(pred.min()) < low or int(pred.max()) >= high:
            raise ValueError(f"predictor {type(predictor).__name__}: preds must lie in [{low}, {high}) "
                             f"(abstain = {ABSTAIN}{'' if low < 0 else ', and it has can_abstain False'}), got "
                             f"{int(pred.min())}..{int(pred.max())}")
    return pred.long(), score.double()


def confusion_counts(model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
                     batch_size: int, attack: Attack | None = None, generator: torch.Generator | None = None,
                     rank: int = 0, world: int = 1, soft: bool = False, predictor: Predictor | None = None):
    """K×K counts (rows true, columns predicted) over ``dataset``, summed over all ranks.

    Predictions come from ``predictor`` (default arg-max); samples it abstains on are in no
    cell (so ``counts.sum()`` may be below ``len(dataset)``: divide accuracies by the
    dataset's size, abstentions counting as not correct).
    The model is put in eval mode for the forward passes and its previous mode restored.
    With ``soft=True`` returns ``(counts, soft_sums)``: ``soft_sums[i]`` is the sum of the
    softmax vectors of the (attacked) samples of true class ``i`` (float64), from the same
    forward pass, so ``soft_sums / counts.sum(1)`` is Sy-FAR's soft confusion matrix (§4.2)
    of the whole dataset.
    """
    attacked = model if predictor is None else predictor.attack_model(model)
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    soft_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device) if soft else None
    try:
        for x, y in DataLoader(shard(dataset, rank, world), batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            if attack is not None:
                x = attack(attacked, x, y, generator=generator)
            if predictor is None:
                with torch.no_grad():
                    logits = model(x)
                pred = logits.argmax(dim=1)
            else:
                pred, _ = predict(predictor, model, x, num_classes)
                if soft_sums is not None:
                    with torch.no_grad():
                        logits = model(x)
            kept = pred != ABSTAIN
            counts += confusion_matrix(y[kept], pred[kept], num_classes)
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

    ``labels``/``preds``: (N,) true classes and final predictions, :data:`ABSTAIN` (-1) where
    the predictor abstained; ``scores``: (N,) float64, the predictor's score of each final
    prediction; ``can_abstain``: the predictor's flag (abstention metrics are reported only
    when it is set); ``reject_rule``/``threshold``: how the scores are thresholded, for a
    predictor that rejects by its score (:meth:`rejected`); ``score_range``: the predictor's
    (``Predictor.score_range``), what a threshold grid is mapped onto. ``stages``: for an
    ensemble (a ``StagedAttack``), member label -> (N,) bool, still robust after
    that member (cumulative). ``target_success``: "every target" mode only, (K, K) counts of
    samples of true class i that the attack aimed at class t drove to t. ``signal_power`` / ``perturbation_power``:
    (N,) mean(x²) and, untargeted only, mean((x_adv − x)²); ``noise_sigma``: the predictor's (``loudness.py``).
    """
    labels: torch.Tensor
    preds: torch.Tensor
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    target_success: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    can_abstain: bool = False
    #: the predictor's threshold rule and operating threshold (``Predictor.reject_rule``), None
    #: for a predictor that does not reject by thresholding its score
    reject_rule: str | None = None
    threshold: float | None = None
    score_range: tuple[float, float] | None = None
    signal_power: torch.Tensor | None = None
    perturbation_power: torch.Tensor | None = None
    noise_sigma: float | None = None

    def counts(self, num_classes: int) -> torch.Tensor:
        """K×K confusion counts of the samples not abstained on (an abstention is no column)."""
        kept = ~self.abstained
        return confusion_matrix(self.labels[kept], self.preds[kept], num_classes)

    def abstained_counts(self, num_classes: int) -> torch.Tensor:
        """(K,) number of abstentions per true class."""
        return torch.bincount(self.labels[self.abstained], minlength=num_classes)

    @property
    def abstained(self) -> torch.Tensor:
        return self.preds == ABSTAIN

    def rejected(self, thresholds) -> np.ndarray:
        """(T, N) bool: which samples the predictor would reject at each of ``thresholds``
        (its ``reject_rule`` applied to the stored scores); ValueError for a predictor that
        does not reject by thresholding its score."""
        if self.reject_rule is None or self.scores is None:
            raise ValueError("these predictions come from a predictor without a score threshold rule")
        return rejected_at(self.scores.numpy(), self.reject_rule, thresholds)

    @property
    def correct(self) -> torch.Tensor:
        """(N,) bool; an abstention is never correct."""
        return self.preds == self.labels


def _every_target(model, attack: Attack, x, y, num_classes: int, generator, success: torch.Tensor,
                  predictor: Predictor | None = None, attacked: torch.nn.Module | None = None):
    """Attack toward each wrong class in turn; return the worst case per sample (the
    adversarial example with the lowest true-class margin of ``attacked``, the module the
    attack differentiates), its (pred, score), and count targeted successes (the predictor's
    prediction equal to the target)."""
    attacked = model if attacked is None else attacked
    worst_margin = torch.full(y.shape, float("inf"), device=y.device)
    worst_pred = y.clone()
    worst_score = torch.zeros(y.shape, device=y.device)
    for shift in range(1, num_classes):
        target = (y + shift) % num_classes
        x_adv = attack(attacked, x, y, target=target, generator=generator)
        with torch.no_grad():
            logits = attacked(x_adv)
        margin = cw_margin(logits, y)       # < 0: misclassified
        if attacked is model and (predictor is None or type(predictor) is ArgmaxPredictor):   # no second pass
            pred, score = ArgmaxPredictor.from_logits(logits)
        else:
            pred, score = predict(predictor, model, x_adv, num_classes)
        hit = pred == target
        success.index_put_((y[hit], target[hit]), torch.ones_like(y[hit]), accumulate=True)
        better = margin < worst_margin
        worst_margin = torch.where(better, margin, worst_margin)
        worst_pred = torch.where(better, pred, worst_pred)
        worst_score = torch.where(better, score, worst_score)
    return worst_pred, worst_score


def _fixed_target(model, attack: Attack, x, y, target_class: int, generator, predictor: Predictor | None = None,
                  num_classes: int | None = None, attacked: torch.nn.Module | None = None):
    """Targeted toward one class; samples of that class are left clean (nothing to aim at)."""
    attacked = model if attacked is None else attacked
    pred, score = predict(predictor, model, x, num_classes)
    aim = y != target_class
    if aim.any():
        target = torch.full_like(y[aim], target_class)
        pred[aim], score[aim] = predict(predictor, model, attack(attacked, x[aim], y[aim], target=target,
                                                                 generator=generator), num_classes)
    return pred, score


def predict_dataset(model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
                    batch_size: int, attack: Attack | None = None, target: int | str | None = None,
                    generator: torch.Generator | None = None, rank: int = 0, world: int = 1,
                    predictor: Predictor | None = None) -> Predictions:
    """Per-sample predictions over ``dataset``, clean or under ``attack``, merged over ranks.

    Every prediction (clean, each adversarial example, each targeted try) goes through
    ``predictor`` (default: arg-max, never abstains); abstentions stay :data:`ABSTAIN` and
    the scores are kept per sample. Attacks differentiate ``predictor.attack_model(model)``
    (the model itself, or the EOT form of a randomised predictor).
    ``target``: None (the attack's own mode), an int class index (targeted toward that
    class; its own samples stay clean), or "every" (each wrong class in turn, the worst case
    per sample kept, targeted success counted in ``target_success``). "random" is an
    attack option (``target_mode``), not handled here. Batches stream: memory holds one batch and a few (N,) vectors.
    """
    if isinstance(target, str) and target != "every":
        raise ValueError(f"target must be None, a class index or 'every', got {target!r}")
    n = len(dataset)
    indices = torch.arange(rank, n, world)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    preds = torch.zeros(n, dtype=torch.long, device=device)
    scores = torch.zeros(n, dtype=torch.float64, device=device)
    signal, perturbation = (torch.zeros(n, dtype=torch.float64, device=device) for _ in range(2))
    stages: dict[str, torch.Tensor] = {}
    success = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device) if target == "every" else None
    attacked = model if predictor is None else predictor.attack_model(model)
    was_training = model.training
    model.eval()
    start = 0
    error: BaseException | None = None
    try:
        for x, y in DataLoader(shard(dataset, rank, world), batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            at = indices[start:start + len(y)].to(device)
            start += len(y)
            signal[at] = clip_power(x).to(device)
            if attack is None:
                pred, score = predict(predictor, model, x, num_classes)
            elif target == "every":
                pred, score = _every_target(model, attack, x, y, num_classes, generator, success, predictor,
                                            attacked)
            elif target is not None:
                pred, score = _fixed_target(model, attack, x, y, int(target), generator, predictor, num_classes,
                                            attacked)
            elif isinstance(attack, StagedAttack):
                x_adv, batch_stages = attack.run_stages(attacked, x, y, generator=generator)
                perturbation[at] = clip_power(x_adv - x).to(device)
                pred, score = predict(predictor, model, x_adv, num_classes)
                for label, flags in batch_stages.items():
                    stages.setdefault(label, torch.zeros(n, dtype=torch.long, device=device))[at] = \
                        flags.to(device=device, dtype=torch.long)
            else:
                x_adv = attack(attacked, x, y, generator=generator)
                pred, score = predict(predictor, model, x_adv, num_classes)
                perturbation[at] = clip_power(x_adv - x).to(device)
            # +1: the all-reduce below sums the ranks' disjoint shards (every index is written by
            # exactly one rank, the others hold 0); an abstention (-1) is 0 here and -1 again after
            labels[at] = y + 1
            preds[at] = pred + 1
            scores[at] = score.to(device=device, dtype=torch.float64)
    except Exception as err:         # other ranks wait in the collectives below: tell them first
        if world == 1:
            raise
        error = err
    finally:
        model.train(was_training)
    if world > 1:
        stages = _agree_on_stages(stages, error, n, device, rank, world)
        for tensor in (labels, preds, scores, signal, perturbation, *stages.values(),
                       *([success] if success is not None else [])):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return Predictions(labels=(labels - 1).cpu(), preds=(preds - 1).cpu(),
                       stages={k: v.cpu().bool() for k, v in stages.items()},
                       target_success=None if success is None else success.cpu(), scores=scores.cpu(),
                       can_abstain=bool(getattr(predictor, "can_abstain", False)),
                       reject_rule=getattr(predictor, "reject_rule", None),
                       threshold=getattr(predictor, "threshold", None),
                       score_range=getattr(predictor, "score_range", None), signal_power=signal.cpu(),
                       perturbation_power=perturbation.cpu() if attack is not None and target is None else None,
                       noise_sigma=getattr(predictor, "noise_sigma", None))


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
