"""How much the adaptive-seeds stopping rule of ``distfair run`` biases its interval.

The rule (``seeds: {min, max, wave, until: {metric, ci95_halfwidth: d}}``, the fixed-width
sequential confidence interval of Chow & Robbins (1965), looked at after each wave): run
``min`` seeds, then ``wave`` more at a time; stop at the first look with
``t_{0.975, n-1} * s_n / sqrt(n) <= d`` or at ``max`` seeds, and report the usual Student-t 95%
interval of the mean over the seeds it stopped with.

A rule that stops when the interval is narrow tends to stop on a sample whose spread happens
to be small, so that final interval covers the true mean less often than 95%. This simulates
the rule, 10,000 repetitions per setting (``--reps``), with per-seed values drawn from a
normal and from a skewed distribution (a long tail of bad seeds: ``mu - sigma * (E - 1)``,
``E`` exponential, skewness -2), both with standard deviation ``sigma`` = 0.02 (a plausible
spread of ``val_worst_class_acc`` over seeds), and prints per setting: the realised coverage
of the final interval, the mean number of seeds, how often the target was reached, and the
coverage of the same interval with the mean number of seeds fixed in advance (no stopping rule).

    python scripts/adaptive_seeds_bias.py              # the table in docs/guide/adaptive-seeds.md
    python scripts/adaptive_seeds_bias.py --quick      # 1,000 repetitions, two settings (a test runs it)

numpy and scipy only (no distfair import): the half-width is the one ``distfair.metrics.summarize``
reports, unclipped (tests/test_adaptive_seeds_rule.py checks they agree).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from scipy import stats

SIGMA = 0.02
#: (min, max, target half-width d, wave): the settings of the table
SETTINGS = [(2, 20, 0.01, 1), (3, 20, 0.01, 1), (5, 20, 0.01, 1), (10, 20, 0.01, 1), (3, 20, 0.01, 4),
            (3, 20, 0.02, 1), (3, 20, 0.005, 1), (3, 10, 0.01, 1), (3, 50, 0.005, 1)]
QUICK_SETTINGS = [(3, 20, 0.01, 1), (20, 20, 0.01, 1)]
DISTRIBUTIONS = ("normal", "skewed")


def draw(distribution: str, shape: tuple[int, int], rng: np.random.Generator, sigma: float = SIGMA) -> np.ndarray:
    """Per-seed values minus the true mean (the interval is shift-invariant)."""
    if distribution == "normal":
        return rng.normal(0.0, sigma, shape)
    if distribution == "skewed":
        return -sigma * (rng.exponential(1.0, shape) - 1.0)
    raise ValueError(f"unknown distribution {distribution!r}")


def running_intervals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, half-width) of the 95% Student-t interval over the first n values of every row,
    for n = 1 .. columns (column n-1; the half-width is NaN for n = 1)."""
    n = np.arange(1, x.shape[1] + 1)
    s1 = np.cumsum(x, axis=1)
    s2 = np.cumsum(x * x, axis=1)
    mean = s1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.clip(s2 - s1 * s1 / n, 0.0, None) / (n - 1)
        halfwidth = stats.t.ppf(0.975, n - 1) * np.sqrt(var / n)
    halfwidth[:, 0] = np.nan
    return mean, halfwidth


def looks(min_seeds: int, max_seeds: int, wave: int) -> list[int]:
    """The seed counts at which the rule looks: min, min + wave, ..., max."""
    out = list(range(min_seeds, max_seeds + 1, wave))
    return out if out[-1] == max_seeds else out + [max_seeds]


def simulate(distribution: str, min_seeds: int, max_seeds: int, target: float, wave: int, reps: int,
             rng: np.random.Generator) -> dict:
    x = draw(distribution, (reps, max_seeds), rng)
    mean, halfwidth = running_intervals(x)
    stop = np.full(reps, max_seeds)
    reached = np.zeros(reps, dtype=bool)
    open_ = np.ones(reps, dtype=bool)
    for n in looks(min_seeds, max_seeds, wave):
        now = open_ & (halfwidth[:, n - 1] <= target)
        stop[now], reached[now] = n, True
        open_ &= ~now
    rows = np.arange(reps)
    covered = np.abs(mean[rows, stop - 1]) <= halfwidth[rows, stop - 1]
    fixed_n = int(round(stop.mean()))
    fixed = np.abs(mean[:, fixed_n - 1]) <= halfwidth[:, fixed_n - 1]
    return {"distribution": distribution, "min": min_seeds, "max": max_seeds, "target": target, "wave": wave,
            "reps": reps, "coverage": float(covered.mean()), "mean_seeds": float(stop.mean()),
            "target_reached": float(reached.mean()), "fixed_n": fixed_n, "fixed_n_coverage": float(fixed.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions per setting (default 10000; --quick 1000)")
    parser.add_argument("--quick", action="store_true", help="two settings, 1,000 repetitions (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same table)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    reps = args.reps or (1000 if args.quick else 10000)
    rng = np.random.default_rng(args.seed)
    rows = [simulate(dist, *setting, reps=reps, rng=rng)
            for dist in DISTRIBUTIONS for setting in (QUICK_SETTINGS if args.quick else SETTINGS)]
    if args.json:
        print(json.dumps({"sigma": SIGMA, "reps": reps, "rows": rows}))
        return 0
    se = (0.95 * 0.05 / reps) ** 0.5
    print(f"per-seed sd {SIGMA}; {reps} repetitions per row (Monte Carlo s.e. of a coverage near 0.95: {se:.4f})")
    print("| distribution | min | max | target d | wave | coverage | mean seeds | target reached "
          "| fixed n | coverage at fixed n |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['distribution']} | {r['min']} | {r['max']} | {r['target']:g} | {r['wave']} | "
              f"{r['coverage']:.3f} | {r['mean_seeds']:.1f} | {r['target_reached']:.1%} | {r['fixed_n']} | "
              f"{r['fixed_n_coverage']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
