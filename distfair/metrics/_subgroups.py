"""Subgroup misclassification, group accuracy and group asymmetry (Sy-FAR §7, Def. 1-2).

Input conventions are those of ``fairness_metrics``: a K x K count matrix (rows true,
columns predicted), row-normalised to ``R``; a class is *present* when its row sum is > 0.
Absent classes are left out of every sum and every group size, with a ``UserWarning``.
Mass predicted *into* an absent class is therefore not counted in ``C_hat`` either.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from distfair.metrics._fairness import count_matrix, row_normalise

__all__ = ["group_metrics", "max_bipartition_asym", "subgroup_matrix"]


def _rates(counts, stacklevel: int = 3, abstained=None) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised matrix and presence mask; warns once about absent classes. With
    ``abstained`` (K,) per-true-class abstentions, rows divide by the class totals including
    them (as ``fairness_metrics``)."""
    matrix, abst = count_matrix(counts, abstained)
    rates, present = row_normalise(matrix, "subgroup metrics", stacklevel=stacklevel + 1, abstained=abst)
    return rates, present


def _as_groups(groups, k: int) -> tuple[np.ndarray, int]:
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != k:
        raise ValueError(f"groups: must be a 1-D sequence of length K={k}, got shape "
                         f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        raise ValueError(f"groups: labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"groups: labels must be >= 0, found {labels.min()}")
    m = int(labels.max()) + 1
    unused = sorted(set(range(m)) - set(labels.tolist()))
    if unused:
        raise ValueError(f"groups: labels must be 0..m-1 with every label used, "
                         f"missing {unused}")
    if m < 2:
        raise ValueError("groups: need at least 2 groups to compare, got 1")
    return labels.astype(np.int64), m


def _subgroup_matrix(rates: np.ndarray, present: np.ndarray, labels: np.ndarray,
                     m: int, allow_empty: bool = False) -> np.ndarray:
    # one-hot membership of the present classes: C_hat = (M^T R M) / (n n^T)
    member = np.zeros((rates.shape[0], m))
    member[np.flatnonzero(present), labels[present]] = 1.0
    sizes = member.sum(axis=0)
    empty = np.flatnonzero(sizes == 0)
    if empty.size and not allow_empty:
        raise ValueError(f"groups: groups {empty.tolist()} have no class with samples; "
                         "C_hat is undefined for them")
    sums = member.T @ rates @ member
    outer = np.outer(sizes, sizes)
    # rows and columns of empty groups are NaN (undefined), never a division by 0
    return np.divide(sums, outer, out=np.full_like(sums, np.nan), where=outer > 0)


def subgroup_matrix(counts, groups: Sequence[int], *, abstained=None) -> np.ndarray:
    """m x m subgroup misclassification matrix ``C_hat`` of Sy-FAR Def. 1.

    ``C_hat[a, b] = (1 / (n_a n_b)) * sum_{i in G_a} sum_{j in G_b} R[i, j]`` with ``R`` the
    row-normalised matrix and ``n_a`` the number of *present* classes in ``G_a``.
    ``groups[i]`` is the group of class ``i``; labels must be exactly ``0..m-1``, m >= 2.

    Note ``C_hat[a, a]`` also averages the within-group confusions over ``n_a**2`` pairs,
    so it is *not* the group's accuracy (see ``group_metrics``).

    Raises:
        ValueError: bad counts (see ``fairness_metrics``); groups not of length K, not
            integers, negative, with an unused label, a single group, or a group whose
            classes are all absent (raised rather than dropped, so row ``a`` is group ``a``).
    ``abstained``: optional per-true-class abstention counts (see ``fairness_metrics``).
    """
    rates, present = _rates(counts, abstained=abstained)
    labels, m = _as_groups(groups, rates.shape[0])
    return _subgroup_matrix(rates, present, labels, m)


def group_metrics(counts, groups: Sequence[int], names: Sequence[str] | None = None, *,
                  empty: str = "raise", abstained=None) -> dict:
    """Per-group accuracy and group asymmetries of one evaluation (Sy-FAR §7).

    Arguments and errors as ``subgroup_matrix``; ``names`` (default ``"0"``, ``"1"``, ...)
    are m unique strings without ``"|"``. ``empty``: what a group whose classes all have no
    samples does: ``"raise"`` (default, as ``subgroup_matrix``) or ``"omit"``: a
    ``UserWarning`` names it and it is left out, like an absent class (methods.md
    conventions): its ``group_acc`` and its row and column of ``matrix`` are ``None``, no
    ``group_asym`` pair involves it, and ``group_gap``/``max_group_asym`` are taken over
    the other groups (``None`` when fewer than 2 groups have samples).
    Returned keys (plain floats / lists / dicts):

    - ``group_acc``: name -> mean of ``diag(R)`` over the group's present classes (a
      class-balanced accuracy, as ``per_class_acc``; not ``C_hat[a, a]``, which divides by
      ``n_a**2`` and includes within-group confusions).
    - ``group_gap``: max - min of ``group_acc``.
    - ``group_asym``: ``"a|b"`` -> ``|C_hat[a, b] - C_hat[b, a]|`` for group indices a < b.
    - ``max_group_asym``: max of ``group_asym``.
    - ``matrix``: ``C_hat`` as nested lists.

    ``abstained``: optional (K,) abstentions per true class (see ``fairness_metrics``): they
    count in the class totals only, so ``group_acc`` counts them as not correct.
    """
    rates, present = _rates(counts, abstained=abstained)
    labels, m = _as_groups(groups, rates.shape[0])
    names = [str(a) for a in range(m)] if names is None else list(names)
    if len(names) != m or len(set(names)) != m:
        raise ValueError(f"names: need {m} unique names, got {names}")
    if not all(isinstance(n, str) and "|" not in n for n in names):
        raise ValueError(f"names: must be strings without '|', got {names}")
    if empty not in ("raise", "omit"):
        raise ValueError(f"empty: must be 'raise' or 'omit', got {empty!r}")
    c_hat = _subgroup_matrix(rates, present, labels, m, allow_empty=empty == "omit")
    has = np.array([bool(np.any(present & (labels == a))) for a in range(m)])
    if not has.all():
        warnings.warn(f"groups {[names[a] for a in np.flatnonzero(~has)]} have no class with samples; "
                      "they are left out of the subgroup metrics", UserWarning, stacklevel=2)
    diag = np.diag(rates)
    acc = [float(diag[present & (labels == a)].mean()) if has[a] else None for a in range(m)]
    asym = {f"{names[a]}|{names[b]}": float(abs(c_hat[a, b] - c_hat[b, a]))
            for a in range(m) for b in range(a + 1, m) if has[a] and has[b]}
    kept = [v for v in acc if v is not None]
    return {
        "group_acc": dict(zip(names, acc)),
        "group_gap": max(kept) - min(kept) if len(kept) >= 2 else None,
        "group_asym": asym,
        "max_group_asym": max(asym.values()) if asym else None,
        "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in c_hat],
    }


def max_bipartition_asym(counts, *, abstained=None) -> dict:
    """Largest ``|C_hat_AB - C_hat_BA|`` over all bipartitions {A, B} of the present classes.

    Exact for every K in O(K log K), no enumeration: with ``D = R - R^T`` (present classes,
    P of them) antisymmetric, ``sum_{i in A, j in B} D_ij = sum_{i in A} r_i`` where
    ``r_i = sum_j D_ij`` is class i's net confusion outflow (the ``i, j in A`` terms
    cancel). So ``C_hat_AB - C_hat_BA = sum_{i in A} r_i / (|A| (P - |A|))``; for a fixed
    size s the optimum takes the s largest (or, by A <-> B, smallest) ``r_i``, and the
    maximum is over the P - 1 prefixes of ``r`` sorted in decreasing order.

    Caveat: the value is 0 iff ``r = 0``, which does not imply a symmetric ``R`` for
    K >= 3 (cyclic confusion 0->1->2->0 is balanced). Over partitions into any number of
    groups, the largest group asymmetry is ``max_{i != j} |R_ij - R_ji|`` (``{i}, {j},
    rest``, Sy-FAR Thm. 1 proof), i.e. ``fairness_metrics(...)["max_asym_gap"]``.

    Returns:
        ``{"value", "exact": True, "upper_bound" (== value, the maximum is exact),
        "partition": [A, B]}`` with A, B sorted class lists, ``C_hat_AB >= C_hat_BA``
        (A = the classes confused out of more than into); ties go to the smaller index.

    Raises:
        ValueError: bad counts, or fewer than 2 present classes.

    ``abstained``: optional per-true-class abstention counts (see ``fairness_metrics``).
    """
    rates, present = _rates(counts, abstained=abstained)
    classes = np.flatnonzero(present)
    p = classes.size
    if p < 2:
        raise ValueError(f"counts: need at least 2 classes with samples, got {p}")
    sub = rates[np.ix_(classes, classes)]
    net = (sub - sub.T).sum(axis=1)
    order = np.argsort(-net, kind="stable")
    sizes = np.arange(1, p)
    scores = np.abs(np.cumsum(net[order])[:-1]) / (sizes * (p - sizes))
    best = int(np.argmax(scores))
    side_a = classes[order[: best + 1]]
    side_b = classes[order[best + 1:]]
    value = float(scores[best])
    return {"value": value, "exact": True, "upper_bound": value,
            "partition": [sorted(side_a.tolist()), sorted(side_b.tolist())]}
