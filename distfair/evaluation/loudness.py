"""Loudness of attacks and noise against each clip: signal-to-perturbation ratios in dB.

The speech paper (003, §4.2) states its attack budgets ε and its noise σ as absolute waveform
amplitudes, and real speakers differ in loudness: the same ε is a smaller attack, relative to
the clip, on a loud speaker than on a quiet one (σ = 0.1 is about 0 dB on quiet synthetic
speech). So beside accuracy the evaluation reports how loud each budget was for each group:

    SNR_i = 10·log10(P_signal,i / P_perturbation,i),   P_signal,i = mean(x_i²),
                                                        P_perturbation,i = mean((x_adv,i − x_i)²)

per clip, then averaged (in dB) over the clips of a group. A clip the attack left unchanged
(P_perturbation = 0: ε = 0, or a clip already misclassified that an attack did not move) or a
silent clip (P_signal = 0) has no finite SNR and takes no part in its group's mean; the number
of clips that do is reported beside it. For the Gaussian noise a predictor adds to its input
(randomized smoothing's σ) the perturbation power is its expectation σ², so
SNR_i = 10·log10(P_signal,i / σ²) (clamping to the input range ignored).

The per-sample powers are measured where the attack runs (``distfair.evaluation.predict``:
``Predictions.signal_power`` / ``perturbation_power``, untargeted attacks only); the AUC_acc
summary (``summaries/auc_acc.py``) reports them per group at each budget of its grid, and the
AUC_FPR summary (``summaries/auc_fpr.py``, which runs for every smoothing predictor) the SNR at
the predictor's σ (:func:`noise_snr`).
Budgets relative to each clip's RMS are an attack option (``eps_relative_to: rms``,
``distfair.attacks``). Pure numpy/PyTorch.
"""
from __future__ import annotations

import numpy as np
import torch


def clip_power(x: torch.Tensor) -> torch.Tensor:
    """(B,) float64: mean(x_i²) over all but the batch dimension."""
    return x.detach().double().pow(2).flatten(1).mean(dim=1)


def snr_db(signal_power, perturbation_power) -> np.ndarray:
    """Per clip 10·log10(signal / perturbation) in dB; NaN where either power is 0 (no finite SNR)."""
    signal = np.asarray(signal_power, dtype=np.float64)
    noise = np.broadcast_to(np.asarray(perturbation_power, dtype=np.float64), signal.shape)
    out = np.full(signal.shape, np.nan)
    ok = (signal > 0) & (noise > 0)
    out[ok] = 10.0 * np.log10(signal[ok] / noise[ok])
    return out


def noise_snr_db(signal_power, sigma: float) -> np.ndarray:
    """Per clip SNR against Gaussian noise of std ``sigma``: 10·log10(mean(x²) / σ²)."""
    return snr_db(signal_power, float(sigma) ** 2)


def mean_snr(snr: np.ndarray, members: np.ndarray) -> tuple[float | None, int]:
    """(the mean SNR in dB over the ``members`` with a finite SNR, how many there are); None without any."""
    values = np.asarray(snr, dtype=np.float64)[np.asarray(members, dtype=bool)]
    values = values[np.isfinite(values)]
    return (float(values.mean()) if values.size else None), int(values.size)


def noise_snr(clean, groupings) -> tuple[dict[str, float | None], dict | None]:
    """The SNR at the predictor's input noise σ of the clean evaluation ``clean`` (an
    ``EntryResult``; None: none): ``noise_snr_db`` over its samples and
    ``group_noise_snr_db/<attr>/<group>`` per group of ``groupings``, and their document
    (σ, and per group the mean and the clips with a finite SNR); ``({}, None)`` when its
    predictor adds no noise. What the AUC_FPR summary reports beside its areas."""
    from distfair.evaluation.subgroups import metric_safe

    pred = None if clean is None else clean.predictions
    if pred is None or pred.noise_sigma is None or pred.signal_power is None:
        return {}, None
    snr = noise_snr_db(pred.signal_power.numpy(), pred.noise_sigma)
    value, count = mean_snr(snr, clean.members)
    metrics: dict[str, float | None] = {"noise_snr_db": value}
    doc = {"sigma": float(pred.noise_sigma), "snr_db": value, "snr_n": count, "attributes": {}}
    for grouping in groupings:
        labels = clean.groups(grouping)
        for g, group in enumerate(grouping.names):
            v, c = mean_snr(snr, clean.members & (labels == g))
            metrics[f"group_noise_snr_db/{metric_safe(grouping.attribute)}/{metric_safe(group)}"] = v
            doc["attributes"].setdefault(grouping.attribute, {})[group] = {"snr_db": v, "snr_n": c}
    return metrics, doc
