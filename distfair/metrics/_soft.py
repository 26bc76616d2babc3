"""Differentiable soft confusion matrix and Sy-FAR symmetry loss (Sy-FAR §4.2, Alg. 1)."""

from __future__ import annotations

import torch

__all__ = ["soft_confusion_matrix", "symmetry_loss"]


def soft_confusion_matrix(
    probs: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-class mean of the predicted probability vectors (Sy-FAR §4.2).

    Row ``i`` accumulates ``probs[b]`` over the samples with ``labels[b] == i`` and is then
    divided by ``max(n_i, 1)``, so ``C[i, j]`` estimates P(y_hat = j | y = i). A class
    missing from the batch gives an all-zero row. Differentiable w.r.t. ``probs``.

    Args:
        probs: (B, K) softmax probabilities (float), e.g. of an adversarial batch.
        labels: (B,) integer true labels in ``[0, K)``, on the same device as ``probs``.
        num_classes: K, must equal ``probs.shape[1]``.

    Returns:
        (K, K) tensor with the dtype and device of ``probs``; rows are true classes.

    Raises:
        ValueError: wrong shapes or dtypes, or a label outside ``[0, K)``.
    """
    if probs.dim() != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs: must have shape (B, {num_classes}), got {tuple(probs.shape)}"
        )
    if not probs.is_floating_point():
        raise ValueError(f"probs: must be floating point, got dtype {probs.dtype}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels: must have shape ({probs.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: must hold integer class indices, got dtype {labels.dtype}")
    if labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"labels: must lie in [0, {num_classes}), got {low if low < 0 else high}"
            )
    labels = labels.long()
    sums = probs.new_zeros(num_classes, num_classes).index_add(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype).clamp_min(1)
    return sums / counts.unsqueeze(1)


def symmetry_loss(C: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Sy-FAR symmetry loss, Eq. 1-2: ``sum_{i<j} |a-b| / (a+b+eps) * (a+b)``.

    ``a = C[i, j]``, ``b = C[j, i]``; ``eps = 1/K`` by default (Sy-FAR §4.2). Rows that are
    all zero are classes absent from the batch: pairs involving them are excluded, so a
    missing class adds no penalty of its own (methods.md, Sy-FAR). Vectorised over an
    upper-triangular mask; zero for symmetric ``C``; gradients are finite everywhere
    (the denominator is >= eps, and ``|.|`` has subgradient 0 at ``a = b``).

    Args:
        C: (K, K) row-normalised (soft or hard) confusion matrix, rows true classes.
        eps: positive stability constant; ``None`` means ``1/K``.

    Returns:
        0-dim tensor with the dtype and device of ``C``.

    Raises:
        ValueError: ``C`` not square 2-D, or ``eps <= 0``.
    """
    if C.dim() != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C: must be a square 2-D matrix, got shape {tuple(C.shape)}")
    k = C.shape[0]
    if eps is None:
        eps = 1.0 / k
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    present = (C != 0).any(dim=1)
    pair_mask = torch.triu(torch.ones(k, k, dtype=torch.bool, device=C.device), diagonal=1)
    pair_mask = pair_mask & present.unsqueeze(1) & present.unsqueeze(0)
    a, b = C, C.transpose(0, 1)
    total = a + b
    penalty = (a - b).abs() / (total + eps) * total
    return torch.where(pair_mask, penalty, torch.zeros_like(penalty)).sum()
