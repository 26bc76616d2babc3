"""Seed statistics of ``distfair report``: comparing two configurations from their seeds.

Every test is SciPy's or statsmodels' own; this module only decides which applies, pairs the
seeds, and says when a number is undefined (never NaN):

* **Welch's t-test** (unpaired, unequal variances; Welch 1947, "The generalization of
  Student's problem when several different population variances are involved", Biometrika
  34): ``scipy.stats.ttest_ind(a, b, equal_var=False)``, with the 95% confidence interval of
  the difference of means from its Welch-Satterthwaite degrees of freedom
  (``TtestResult.confidence_interval``). Needs n >= 2 in both groups and some spread.
* **Paired t-test** (Student 1908 on the per-seed differences): ``scipy.stats.ttest_rel``,
  and the **Wilcoxon signed-rank test** (Wilcoxon 1945, "Individual comparisons by ranking
  methods", Biometrics Bulletin 1(6)): ``scipy.stats.wilcoxon`` (exact null distribution for
  small n, zero differences dropped as Wilcoxon did). Both only when the two configurations
  ran *the same seeds*: distfair's seed fixes initialisation, data order and attack starts,
  so seed s of one configuration is paired with seed s of the other. With n <= 5 pairs the
  two-sided Wilcoxon p can never fall below 2/2^n = 0.0625: it is reported, and such a
  comparison is flagged as low evidence anyway.
* **Effect size**: Cohen's d, the difference of means over the pooled sample standard
  deviation ``sqrt(((n1-1)s1² + (n2-1)s2²) / (n1+n2-2))`` (Cohen 1988, *Statistical Power
  Analysis for the Behavioral Sciences*, §2.2), and Hedges' g = J·d with the exact
  small-sample correction ``J = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))``, m = n1+n2-2 (Hedges 1981,
  "Distribution theory for Glass's estimator of effect size", J. Educ. Stat. 6(2), Eq. 6e;
  ≈ 1 - 3/(4m-1)). Computed from ``scipy.special.gammaln``.
* **Holm's step-down correction** across the family of comparisons of one table (Holm 1979,
  "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6(2)):
  ``statsmodels.stats.multitest.multipletests(p, alpha, method="holm")``. It controls the
  family-wise error rate without assuming independence between the tests.
* **Seeds needed**: the number of seeds per configuration with which a two-sided two-sample
  t-test at level alpha (0.05, uncorrected) would detect the *observed* effect |d| with 80%
  power: ``statsmodels.stats.power.TTestIndPower().solve_power(effect_size=|d|, alpha=alpha,
  power=0.8, ratio=1)`` (noncentral t; Cohen 1988, ch. 2), rounded up. The achieved power of
  the seeds at hand is ``TTestIndPower().power`` at (n1, n2). The observed effect is itself
  uncertain with few seeds (a "post-hoc" estimate): read it as a planning number, not as
  evidence.
* **Low evidence**: a comparison with n <= 5 seeds in either configuration.

statsmodels is imported inside the functions that need it (its import takes seconds).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import special, stats

#: the family-wise significance level of a report's tests (Holm-corrected)
ALPHA = 0.05
#: the power at which ``seeds_needed`` detects the observed difference
POWER = 0.8
#: comparisons with at most this many seeds in either configuration are low evidence
LOW_EVIDENCE_N = 5
#: seeds_needed beyond this is reported as "more than" (the effect is practically zero)
MAX_SEEDS = 10_000
#: the tests whose p-value can enter Holm's family
FAMILY_TESTS = ("welch", "paired")


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _values(by_seed: Mapping[int, float | None]) -> dict[int, float]:
    return {int(s): float(v) for s, v in by_seed.items() if v is not None and math.isfinite(float(v))}


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float | None:
    """(mean(a) - mean(b)) / pooled sample std (Cohen 1988 §2.2); None with fewer than 2
    values in a group or no spread in either."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return None
    pooled = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if pooled == 0:
        return None
    return float((a.mean() - b.mean()) / pooled)


def hedges_correction(df: int) -> float:
    """Hedges' exact small-sample factor J(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2)) (Hedges 1981,
    Eq. 6e), m = n1 + n2 - 2 >= 2."""
    if df < 2:
        raise ValueError(f"df: need >= 2, got {df}")
    return float(math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2))


def _power(effect: float, n1: int, n2: int, alpha: float) -> float:
    """Power of the two-sided two-sample t-test (statsmodels ``TTestIndPower.power``). Where
    its noncentral-t tail is numerically undefined (a huge noncentrality, e.g. d = 6 with 10
    seeds) SciPy's ``nct`` is asked; where both fail the power is 1 when the noncentrality
    exceeds the critical value by far, which is the only way both fail."""
    from statsmodels.stats.power import TTestIndPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(np.asarray(TTestIndPower().power(effect_size=effect, nobs1=n1, alpha=alpha, ratio=n2 / n1,
                                                       alternative="two-sided")).reshape(-1)[0])
        if math.isfinite(value):
            return value
        df, nc = n1 + n2 - 2, effect * math.sqrt(n1 * n2 / (n1 + n2))
        crit = float(stats.t.ppf(1 - alpha / 2, df))
        value = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isfinite(value):
        return value
    return 1.0 if nc > crit else 0.0


def seeds_needed(d: float | None, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per configuration for a two-sided two-sample t-test at ``alpha`` to detect the
    standardised difference ``d`` with ``power``: the smallest integer n >= 2 whose power
    (:func:`_power`, equal group sizes) reaches ``power``; statsmodels'
    ``TTestIndPower.solve_power`` proposes it and the integers beside it are checked. None
    when d is undefined or 0; ``MAX_SEEDS + 1`` means "more than MAX_SEEDS"."""
    if d is None or d == 0:
        return None
    from statsmodels.stats.power import TTestIndPower

    effect = abs(float(d))

    def enough(n: int) -> bool:
        return _power(effect, n, n, alpha) >= power

    if enough(2):
        return 2
    if not enough(MAX_SEEDS):
        return MAX_SEEDS + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solved = float(np.asarray(TTestIndPower().solve_power(effect_size=effect, alpha=alpha, power=power,
                                                              ratio=1.0, alternative="two-sided")).reshape(-1)[0])
    if math.isfinite(solved) and 2 < solved < MAX_SEEDS:
        n = math.ceil(solved)
        if enough(n) and not enough(n - 1):
            return n
    low, high = 2, MAX_SEEDS                   # not enough(low), enough(high): bisect on the integers
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def achieved_power(d: float | None, n1: int, n2: int, alpha: float = ALPHA) -> float | None:
    """Power of a two-sided two-sample t-test at ``alpha`` to detect ``d`` with n1 and n2
    seeds (:func:`_power`)."""
    if d is None or n1 < 2 or n2 < 2:
        return None
    return _power(abs(float(d)), n1, n2, alpha)


@dataclass
class Comparison:
    """One configuration against a reference on one table column, from their seed values.

    ``diff`` is mean(configuration) - mean(reference). ``p`` is the p-value of the family's
    test (``test``: Welch, or the paired t-test where the seeds match), ``p_holm`` the same
    after Holm's correction across the table (set by :func:`holm`), ``significant`` whether
    ``p_holm < alpha``. ``undefined`` says why ``p`` is None."""
    n: int
    n_reference: int
    mean: float | None
    mean_reference: float | None
    diff: float | None
    welch_t: float | None = None
    welch_df: float | None = None
    welch_p: float | None = None
    diff_ci95_low: float | None = None
    diff_ci95_high: float | None = None
    paired: bool = False
    paired_n: int = 0
    paired_t: float | None = None
    paired_p: float | None = None
    wilcoxon_stat: float | None = None
    wilcoxon_p: float | None = None
    cohens_d: float | None = None
    hedges_g: float | None = None
    seeds_needed: int | None = None
    power: float | None = None
    low_evidence: bool = True
    test: str = "welch"
    p: float | None = None
    p_holm: float | None = None
    significant: bool = False
    undefined: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def compare(values: Mapping[int, float | None], reference: Mapping[int, float | None], *,
            test: str = "welch", alpha: float = ALPHA) -> Comparison:
    """Compare a configuration's seed values ``{seed: value}`` with a reference's.

    ``test``: which p-value enters the family: ``welch`` (always, when defined) or ``paired``
    (the paired t-test when both ran the same seeds, else Welch). Missing values (None, NaN)
    are left out before anything else."""
    if test not in FAMILY_TESTS:
        raise ValueError(f"test: expected one of {FAMILY_TESTS}, got {test!r}")
    a_by, b_by = _values(values), _values(reference)
    a, b = np.array(list(a_by.values())), np.array(list(b_by.values()))
    n1, n2 = len(a), len(b)
    out = Comparison(n=n1, n_reference=n2, mean=float(a.mean()) if n1 else None,
                     mean_reference=float(b.mean()) if n2 else None,
                     diff=float(a.mean() - b.mean()) if n1 and n2 else None,
                     low_evidence=min(n1, n2) <= LOW_EVIDENCE_N, test="welch")
    if n1 < 2 or n2 < 2:
        out.undefined = f"needs at least 2 seeds in each configuration (have {n1} and {n2})"
        return out
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        out.undefined = "no spread across seeds in either configuration"
        return out
    with warnings.catch_warnings():
        # SciPy warns of "catastrophic cancellation" when a group's values are (nearly) equal,
        # e.g. a clean accuracy of 1.0 on every seed: the statistic is still the exact one
        warnings.simplefilter("ignore", RuntimeWarning)
        return _tests(out, a_by, b_by, a, b, test, alpha)


def _tests(out: Comparison, a_by: dict, b_by: dict, a: np.ndarray, b: np.ndarray, test: str,
           alpha: float) -> Comparison:
    n1, n2 = len(a), len(b)
    welch = stats.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(0.95)
    out.welch_t, out.welch_p, out.welch_df = _finite(welch.statistic), _finite(welch.pvalue), _finite(welch.df)
    out.diff_ci95_low, out.diff_ci95_high = _finite(ci.low), _finite(ci.high)
    out.cohens_d = cohens_d(a, b)
    if out.cohens_d is not None:
        out.hedges_g = hedges_correction(n1 + n2 - 2) * out.cohens_d
    out.seeds_needed = seeds_needed(out.cohens_d, alpha)
    out.power = achieved_power(out.cohens_d, n1, n2, alpha)
    out.p = out.welch_p
    if set(a_by) == set(b_by):
        seeds = sorted(a_by)
        x, y = np.array([a_by[s] for s in seeds]), np.array([b_by[s] for s in seeds])
        differences = x - y
        out.paired, out.paired_n = True, len(seeds)
        if np.ptp(differences) > 0:
            paired = stats.ttest_rel(x, y)
            out.paired_t, out.paired_p = _finite(paired.statistic), _finite(paired.pvalue)
        if np.any(differences != 0):
            wilcoxon = stats.wilcoxon(x, y)
            out.wilcoxon_stat, out.wilcoxon_p = _finite(wilcoxon.statistic), _finite(wilcoxon.pvalue)
        if test == "paired" and out.paired_p is not None:
            out.test, out.p = "paired", out.paired_p
    if out.p is None:
        out.undefined = "the test statistic is undefined"
    return out


def holm(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> None:
    """Holm's step-down correction over the defined p-values of ``comparisons`` (one
    family: the comparisons of one table), in place: ``p_holm`` and ``significant``
    (statsmodels ``multipletests(method="holm")``). Undefined comparisons stay
    not significant and are not counted in the family."""
    defined = [c for c in comparisons if c.p is not None]
    for c in comparisons:
        c.p_holm, c.significant = None, False
    if not defined:
        return
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests([c.p for c in defined], alpha=alpha, method="holm")
    for c, r, p in zip(defined, reject, adjusted):
        c.p_holm, c.significant = float(p), bool(r)


def std_interval(std: float | None, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of a population std from a sample std of n values
    under normality: ``s·sqrt((n-1)/χ²_{1-a/2, n-1})`` to ``s·sqrt((n-1)/χ²_{a/2, n-1})``
    (``scipy.stats.chi2``). None for n < 2."""
    if std is None or n < 2:
        return None
    a = 1 - level
    return (float(std * math.sqrt((n - 1) / stats.chi2.ppf(1 - a / 2, n - 1))),
            float(std * math.sqrt((n - 1) / stats.chi2.ppf(a / 2, n - 1))))
