"""Hard confusion matrix from integer labels (rows true class, columns prediction)."""

from __future__ import annotations

import torch

__all__ = ["confusion_matrix"]


def _as_label_tensor(name: str, labels) -> torch.Tensor:
    tensor = torch.as_tensor(labels)
    if tensor.dim() != 1:
        raise ValueError(f"{name}: must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name}: must hold integer class indices, got dtype {tensor.dtype}")
    return tensor


def confusion_matrix(y_true, y_pred, num_classes: int) -> torch.Tensor:
    """Count matrix ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Convention (methods.md "Conventions that hold everywhere"; Sy-FAR §4.2): rows are
    true classes, columns predictions. Computed with one ``torch.bincount`` on the inputs'
    device, so it works unchanged on CPU and GPU.

    Args:
        y_true: (N,) integer tensor (or array-like) of true labels in ``[0, num_classes)``.
        y_pred: (N,) integer tensor (or array-like) of predicted labels, same range and device.
        num_classes: K >= 1, the number of classes of the task (absent ones included).

    Returns:
        ``torch.LongTensor`` of shape (K, K) on the inputs' device. N = 0 gives all zeros.

    Raises:
        ValueError: wrong shapes, non-integer dtypes, different devices, ``num_classes < 1``
            or a label outside ``[0, num_classes)`` (the message names the offending value).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: must be an int >= 1, got {num_classes!r}")
    true = _as_label_tensor("y_true", y_true)
    pred = _as_label_tensor("y_pred", y_pred)
    if true.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred: must have the same length, got {true.numel()} and {pred.numel()}"
        )
    if true.device != pred.device:
        raise ValueError(
            f"y_true and y_pred: must be on the same device, got {true.device} and {pred.device}"
        )
    k = num_classes
    if true.numel() > 0:
        for name, labels in (("y_true", true), ("y_pred", pred)):
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= k:
                bad = low if low < 0 else high
                raise ValueError(
                    f"{name}: labels must lie in [0, {k}) for num_classes={k}, got {bad}"
                )
    flat = true.long() * k + pred.long()
    return torch.bincount(flat, minlength=k * k).reshape(k, k)
