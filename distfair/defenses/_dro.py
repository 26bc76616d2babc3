"""The KL-constrained class-level DRO of FAAL (Zhang et al., CVPR 2024), solved without cvxpy.

Problem, for per-class losses m (K,) of the classes present in a batch and a radius r > 0:

    max_p  Σ_c p_c m_c   s.t.  Σ_c p_c = 1,  p ≥ 0,  KL(u ‖ p) = Σ_c u_c log(u_c / p_c) ≤ r

with u uniform (u_c = 1/K). The objective is linear and the feasible set convex, so the KKT
conditions characterise the optimum: stationarity of the Lagrangian gives
p_c = λ u_c / (η − m_c) with η > max m, and Σ p = 1 fixes λ, so

    p_c(η) ∝ 1 / (η − m_c).

As η decreases from +∞ to max m, p(η) moves from u to the uniform distribution over the
argmax classes and KL(u ‖ p(η)) rises from 0 to +∞. When m is not constant the constraint is
active at the optimum, so η is the unique root of KL(u ‖ p(η)) = r, found by bisection on
log(η − max m) (the problem is invariant to shifting m and equivariant to scaling it by a positive
factor, so the search runs on d = (max m − m) / (max m − min m) in [0, 1]). The reference code
calls cvxpy every batch; this solves the same problem in float64 on the CPU (one K-vector
copy per batch, ~0.5 ms), to ~1e-12 relative precision in η − max m.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_BISECTION_STEPS = 200
_LOG_T_MIN, _LOG_T_MAX = -690.0, 60.0   # t = η − max m in units of the loss range; exp(-690) > 0 in float64


def _log_weights(log_t: float, log_d: np.ndarray) -> np.ndarray:
    """log p_c for p_c ∝ 1/(t + d_c), t = exp(log_t), computed in log space."""
    log_inv = -np.logaddexp(log_t, log_d)                  # -log(t + d_c)
    top = log_inv.max()
    return log_inv - (top + np.log(np.exp(log_inv - top).sum()))


def _kl_uniform(log_t: float, log_d: np.ndarray) -> float:
    """KL(u ‖ p) = -log K - mean_c log p_c."""
    return float(-math.log(log_d.size) - _log_weights(log_t, log_d).mean())


def kl_dro_weights(m: torch.Tensor, r: float) -> torch.Tensor:
    """Worst-case class weights p maximising Σ p_c m_c over {p : Σp = 1, p ≥ 0, KL(u‖p) ≤ r}.

    Args:
        m: (K,) per-class losses of the classes present in the batch (any real values; the
            tensor is detached, so the weights are constants for autograd).
        r: KL radius (nats), > 0. Larger r puts more weight on the worst classes.

    Returns:
        (K,) weights on m's device and dtype, ≥ 0, summing to 1, with KL(u ‖ p) = r (up to
        the bisection's precision) unless all m are equal (then p = u) or K = 1 (p = [1]).
    """
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0):
        raise ValueError(f"r must be a finite number > 0, got {r!r}")
    if not isinstance(m, torch.Tensor) or m.ndim != 1 or m.numel() == 0:
        raise ValueError(f"m must be a non-empty 1-D tensor of per-class losses, got {m!r}")
    values = m.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"m must be finite, got {values.tolist()}")
    k = values.numel()
    out = {"device": m.device, "dtype": m.dtype if m.is_floating_point() else torch.get_default_dtype()}
    spread = float(values.max() - values.min())
    if k == 1 or spread <= 0.0:
        return torch.full((k,), 1.0 / k, **out)
    with np.errstate(divide="ignore"):  # d in [0, 1], d = 0 (log d = -inf) at the worst class(es)
        log_d = np.log(((values.max() - values) / spread).numpy())
    lo, hi = _LOG_T_MIN, _LOG_T_MAX  # KL(lo) ≥ r ≥ KL(hi) unless r is out of reach
    if _kl_uniform(hi, log_d) >= r:  # r at float64 noise (≲1e-15): p = u
        return torch.full((k,), 1.0 / k, **out)
    if _kl_uniform(lo, log_d) <= r:  # r out of reach: the t → 0 limit (uniform on the argmax classes)
        return torch.from_numpy(np.exp(_log_weights(lo, log_d))).to(**out)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _kl_uniform(mid, log_d) > r:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return torch.from_numpy(np.exp(_log_weights(hi, log_d))).to(**out)   # hi: the feasible side
