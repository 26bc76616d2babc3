"""Accuracy, source-, symmetry- and target-class fairness metrics of a confusion matrix.

Definitions follow Sy-FAR §5 ("Evaluation Metrics") and methods.md "Metrics"; the
symmetry loss is Sy-FAR §4.2 Eq. 1-2 evaluated on the row-normalised hard matrix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["fairness_metrics", "worst10_is_worst_class"]

#: ``worst10_acc`` is the mean of the lowest ceil(P / WORST10_SHARE) per-class accuracies
WORST10_SHARE = 10


def worst10_is_worst_class(worst10: Mapping | Sequence, worst_class: Mapping | Sequence) -> bool:
    """Whether ``worst10_acc`` says nothing ``worst_class_acc`` does not: the same seeds (keys
    of mappings seed -> value, or positions of sequences) with equal values. With at most 10
    classes present ceil(P/10) = 1, so ``worst10_acc`` is the lowest class accuracy itself
    and this is always true; then tables leave ``worst10_acc`` out. False without values."""
    a = dict(worst10) if isinstance(worst10, Mapping) else dict(enumerate(worst10))
    b = dict(worst_class) if isinstance(worst_class, Mapping) else dict(enumerate(worst_class))
    if not a or a.keys() != b.keys():
        return False
    return all(a[k] is not None and b[k] is not None and math.isclose(a[k], b[k], rel_tol=0.0, abs_tol=1e-12)
               for k in a)


def _as_count_matrix(counts, *, allow_zero: bool = False) -> np.ndarray:
    if hasattr(counts, "detach"):  # torch tensor: no torch import needed for this
        counts = counts.detach().cpu().numpy()
    try:
        matrix = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"counts: must be a numeric K x K matrix ({err})") from err
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"counts: must be a square 2-D matrix, got shape {matrix.shape}")
    if matrix.shape[0] < 2:
        raise ValueError(f"counts: needs at least 2 classes, got K={matrix.shape[0]}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("counts: entries must be finite, found NaN or inf")
    if np.any(matrix < 0):
        raise ValueError(f"counts: entries must be >= 0, found minimum {matrix.min()}")
    if matrix.sum() == 0 and not allow_zero:
        raise ValueError("counts: total count is 0, no samples to evaluate")
    return matrix


def _as_abstained(abstained, k: int) -> np.ndarray:
    """(K,) float64 abstention counts per true class, validated (zeros when None)."""
    if abstained is None:
        return np.zeros(k)
    if hasattr(abstained, "detach"):
        abstained = abstained.detach().cpu().numpy()
    vector = np.asarray(abstained, dtype=np.float64)
    if vector.shape != (k,):
        raise ValueError(f"abstained: must be a vector of length K={k}, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)) or np.any(vector < 0):
        raise ValueError("abstained: entries must be finite and >= 0")
    return vector


def count_matrix(counts, abstained=None) -> tuple[np.ndarray, np.ndarray]:
    """Validated (K x K counts, (K,) abstentions per true class). With abstentions a class
    is present when it has a sample, classified or abstained; the total over both must be > 0."""
    matrix = _as_count_matrix(counts, allow_zero=abstained is not None)
    vector = _as_abstained(abstained, matrix.shape[0])
    if matrix.sum() + vector.sum() == 0:
        raise ValueError("counts: total count is 0, no samples to evaluate")
    return matrix, vector


def row_normalise(matrix: np.ndarray, used_by: str, stacklevel: int,
                  abstained: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row-normalised matrix, presence mask) of a validated count matrix. Absent classes
    (row sum 0) keep an all-zero row, and one ``UserWarning`` names them; ``stacklevel``
    points it at the caller of the public metric function. With ``abstained`` (K,) the
    denominator of row i is the class total ``sum_j counts[i, j] + abstained[i]``: rows then
    sum to 1 minus the class's rejection rate (an abstention is never a column)."""
    row_sums = matrix.sum(axis=1) + (0 if abstained is None else abstained)
    present = row_sums > 0
    absent = np.flatnonzero(~present)
    if absent.size:
        warnings.warn(f"classes {absent.tolist()} have no samples; they are left out of the {used_by}",
                      UserWarning, stacklevel=stacklevel)
    rates = np.zeros_like(matrix)
    rates[present] = matrix[present] / row_sums[present, None]
    return rates, present


def fairness_metrics(counts, abstained=None) -> dict:
    """All fairness metrics of one evaluation from its K x K confusion matrix.

    ``counts[i, j]`` counts samples of true class ``i`` predicted as ``j`` (non-negative,
    finite, need not be integers; numpy array, nested list or torch tensor).

    A class is *present* when its row sum is > 0. Absent classes get ``None`` in
    ``per_class_acc``, are left out of every per-class statistic and pair statistic, and a
    ``UserWarning`` names them (methods.md conventions: never a NaN, never a division by 0).
    ``R`` is the row-normalised matrix (absent rows stay zero). Returned keys, all plain
    Python floats or ``None``:

    - ``acc``: trace(counts) / total count (over all samples).
    - ``per_class_acc``: list of length K, ``diag(R)`` (``None`` for absent classes).
    - ``worst_class_acc``, ``acc_gap``: min, and max - min, of present per-class accs.
    - ``nsd``: population std (ddof=0) / mean of present per-class accs; ``None`` if mean 0.
    - ``worst10_acc``: mean of the lowest ceil(P/10) per-class accs, P = #present classes.
    - ``max_asym_gap``: max over present i<j of ``|R_ij - R_ji|``; 0.0 if P < 2.
    - ``sym_loss``: Sy-FAR Eq. 2 on ``R`` over present pairs,
      ``sum |a-b| / (a+b+eps) * (a+b)`` with ``a=R_ij``, ``b=R_ji``, ``eps = 1/K``.
    - ``tgt_max``, ``tgt_min``, ``tgt_std`` (ddof=0) of the target confusion shares
      ``T_j = sum_{i!=j} R_ij / sum_i sum_{k!=i} R_ik`` over all columns j (Sy-FAR §5);
      ``None`` when there are no misclassifications (shares undefined, no warning).

    Abstentions (methods.md "Metrics": a rejected sample is neither correct nor a prediction
    of any class): ``abstained[i]`` counts the samples of true class ``i`` the predictor
    abstained on; they are not in ``counts``. They count in every denominator and in no
    numerator: ``acc = trace / (total + sum(abstained))``, ``R_ij = counts[i, j] / (row sum
    + abstained[i])`` (so ``per_class_acc`` is correct / all samples of the class), and a
    class with only abstained samples is present. Two more keys then (only when
    ``abstained`` is given, so an evaluation that cannot abstain keeps today's key set):

    - ``rejection_rate``: ``sum(abstained) / (total + sum(abstained))``.
    - ``per_class_rejection``: list of length K, ``abstained[i] / class total`` (``None``
      for absent classes).

    Raises:
        ValueError: not square 2-D, K < 2, negative or non-finite entries, total count 0,
            ``abstained`` not a non-negative vector of length K.
    """
    matrix, abst = count_matrix(counts, abstained)
    k = matrix.shape[0]
    rates, present = row_normalise(matrix, "per-class fairness metrics", stacklevel=3, abstained=abst)

    diag = np.diag(rates)
    accs = np.sort(diag[present])
    mean_acc = float(accs.mean())
    n_worst = math.ceil(accs.size / WORST10_SHARE)

    # Pairs i<j with both classes present; absent rows are zero but their columns are not.
    pair_mask = np.triu(np.ones((k, k), dtype=bool), 1) & present[:, None] & present[None, :]
    a = rates[pair_mask]
    b = rates.T[pair_mask]
    eps = 1.0 / k
    asym = np.abs(a - b)

    off_diag = rates - np.diag(diag)
    misclassified = off_diag.sum()
    if misclassified > 0:
        shares = off_diag.sum(axis=0) / misclassified
        tgt_max, tgt_min = float(shares.max()), float(shares.min())
        tgt_std = float(shares.std())
    else:
        tgt_max = tgt_min = tgt_std = None

    out = {
        "acc": float(np.trace(matrix) / (matrix.sum() + abst.sum())),
        "worst_class_acc": float(accs[0]),
        "acc_gap": float(accs[-1] - accs[0]),
        "nsd": float(accs.std() / mean_acc) if mean_acc > 0 else None,
        "worst10_acc": float(accs[:n_worst].mean()),
        "max_asym_gap": float(asym.max()) if asym.size else 0.0,
        "sym_loss": float(np.sum(asym / (a + b + eps) * (a + b))),
        "tgt_max": tgt_max,
        "tgt_min": tgt_min,
        "tgt_std": tgt_std,
        "per_class_acc": [float(diag[i]) if present[i] else None for i in range(k)],
    }
    if abstained is not None:
        totals = matrix.sum(axis=1) + abst
        out["rejection_rate"] = float(abst.sum() / totals.sum())
        out["per_class_rejection"] = [float(abst[i] / totals[i]) if present[i] else None for i in range(k)]
    return out
