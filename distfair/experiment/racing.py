"""Racing configurations over seeds (issue 30): the decision taken after one wave of seeds.

A sweep with racing gives every configuration its seeds in waves: first ``min_seeds``, then
``wave`` more at a time up to ``max_seeds``. After each wave, :func:`race_step` says which
configurations stop getting seeds. This module is that decision alone, pure and offline: no Ray,
no MLflow, no torch at import (the objective statistic is computed with
``distfair.config.space.Target`` over ``distfair.metrics.aggregate_seed_metrics``, exactly as
``distfair.experiment.sweep_results`` computes a configuration's objective; both packages load
torch through their ``__init__``, so they are imported on first use, not here). SciPy does the
statistics: ``scipy.stats.wilcoxon`` or ``scipy.stats.ttest_rel``, one-sided.

The rule, one objective (``targets`` of length 1, mode max or min):

- each configuration's *objective* is the target's statistic (mean, mean_minus_std, ...) over its
  own seeds; the **best** is the configuration with the best objective (ties: the first in
  ``results``' order). The best never stops.
- every other configuration ``c`` is compared with the best on the seed indices both have
  (paired: seed ``i`` of ``c`` with seed ``i`` of the best). With at least ``min_seeds`` such
  seeds, the per-seed differences are oriented so that negative means "``c`` is worse" (``c − best``
  for max, ``best − c`` for min) and tested one-sided (``alternative="less"``). ``c`` **stops** when
  ``p < alpha`` and its objective over those paired seeds is strictly worse than the best's there.
- no significance is possible without a difference: when every paired difference is zero there
  is no test (``pvalue`` None) and nothing stops; a p-value SciPy returns as NaN counts the same.

Several objectives ("dominated with significance"): each configuration's objective vector is
its targets' statistics over its own seeds; the **front** is the Pareto set of those vectors
(``distfair.config.space.pareto_front``), and no member of the front ever stops. A configuration
``c`` off the front **stops** when some other configuration ``b`` exists such that, on the seeds
both have (at least ``min_seeds``): ``b``'s objective is at least as good as ``c``'s on *every*
target (each under its own mode), and on at least one *testable* target the one-sided paired test
of ``c`` against ``b`` gives ``p < alpha`` with ``c``'s objective there strictly worse. A target
whose statistic is ``std`` is not testable: a paired test compares the seeds' values, not their
spread. It still counts in "at least as good on every target". There is no correction across
targets, comparisons or waves: each test is at ``alpha``, so repeated looks stop more often than
``alpha`` suggests (Optuna's ``WilcoxonPruner`` recommends a Pocock-corrected threshold for this
reason); the replay (``distfair.experiment.race_replay``) measures what that costs.

Small n: an exact one-sided Wilcoxon signed-rank test over ``n`` paired seeds cannot give a p
below ``1/2**n`` (all ``n`` differences of one sign), and zero differences are dropped (SciPy's
``zero_method="wilcox"``) before ``n`` is counted. At ``alpha = 0.05`` nothing stops before 5
seeds that all differ; at 0.1, before 4. :meth:`RacingSpec.warnings` says so for a spec (a
message to print, not an error). The paired t-test has no such floor but assumes roughly normal
differences, which few seeds cannot check.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

TESTS = ("wilcoxon", "ttest")
#: statistics over seeds that are not a location of the per-seed values: no paired test of
#: the values says anything about them (they still count in the dominance of several targets)
UNTESTABLE_STATS = frozenset({"std"})


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RacingSpec:
    """How configurations race: seeds from ``min_seeds`` up to ``max_seeds``, ``wave`` more per
    wave to every survivor, a one-sided paired ``test`` (``wilcoxon``: ``scipy.stats.wilcoxon``;
    ``ttest``: ``scipy.stats.ttest_rel``) at level ``alpha``. Raises ValueError naming every bad
    field; :meth:`warnings` tells what is valid but cannot stop anything."""
    min_seeds: int
    max_seeds: int
    test: str = "wilcoxon"
    alpha: float = 0.05
    wave: int = 1

    def __post_init__(self):
        problems = []
        if not _integer(self.min_seeds) or self.min_seeds < 2:
            problems.append(f"min_seeds must be an integer >= 2 (a paired test needs two seeds), "
                            f"got {self.min_seeds!r}")
        if not _integer(self.max_seeds):
            problems.append(f"max_seeds must be an integer, got {self.max_seeds!r}")
        elif _integer(self.min_seeds) and self.max_seeds < self.min_seeds:
            problems.append(f"max_seeds must be >= min_seeds ({self.min_seeds}), got {self.max_seeds}")
        if self.test not in TESTS:
            problems.append(f"test must be one of {', '.join(TESTS)}, got {self.test!r}")
        if (not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool)
                or not math.isfinite(self.alpha) or not 0 < self.alpha < 1):
            problems.append(f"alpha must be a number in (0, 1), got {self.alpha!r}")
        if not _integer(self.wave) or self.wave < 1:
            problems.append(f"wave must be an integer >= 1 (seeds added per wave), got {self.wave!r}")
        if problems:
            raise ValueError("racing: " + "; ".join(problems))

    def warnings(self) -> list[str]:
        """What the caller should print: with the Wilcoxon test, the fewest paired seeds at
        which a one-sided p below ``alpha`` is possible (p >= 1/2**n over n seeds), when
        ``min_seeds`` (or even ``max_seeds``) is below it. Empty for the t-test."""
        if self.test != "wilcoxon":
            return []
        needed = fewest_seeds_to_stop(self.alpha, self.max_seeds)
        if needed is None:
            return [f"racing: with the Wilcoxon test at alpha {self.alpha:g}, no configuration can ever stop: over n "
                    f"paired seeds its one-sided p is at least 1/2^n, and max_seeds {self.max_seeds} is too few "
                    f"(raise max_seeds or alpha, or use test: ttest)"]
        if self.min_seeds < needed:
            return [f"racing: with the Wilcoxon test at alpha {self.alpha:g}, nothing can stop before {needed} paired "
                    f"seeds (over n seeds its one-sided p is at least 1/2^n): the waves from min_seeds "
                    f"{self.min_seeds} to {needed - 1} seeds cannot stop anything"]
        return []


@lru_cache(maxsize=64)
def _smallest_wilcoxon_p(n: int) -> float:
    from scipy import stats

    return float(stats.wilcoxon(-np.arange(1.0, n + 1), alternative="less").pvalue)


def fewest_seeds_to_stop(alpha: float, max_seeds: int) -> int | None:
    """The fewest paired seeds (2..``max_seeds``) over which SciPy's one-sided Wilcoxon test
    can give p < ``alpha`` (every difference of one sign, all distinct), or None if none can."""
    for n in range(2, max_seeds + 1):
        if _smallest_wilcoxon_p(n) < alpha:
            return n
    return None


@dataclass(frozen=True)
class PairedTest:
    """The one-sided paired test of ``configuration`` against ``against`` on one target:
    ``n`` paired seeds, SciPy's ``statistic`` and ``pvalue`` (None: no test, every paired
    difference was zero or SciPy gave NaN), and whether it stops ``configuration``
    (``significant``: p < alpha and its objective on those seeds strictly worse)."""
    configuration: str
    against: str
    target: str
    test: str
    n: int
    statistic: float | None
    pvalue: float | None
    significant: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RaceDecision:
    """What one wave decided. ``stopped``: each configuration that stops now and the test that
    stopped it; ``survivors`` keep racing (input order); ``best``: the configuration with the
    best objective (multi-objective: the front member best under the first target, as
    ``distfair.experiment.sweep_results.choose`` picks); ``front``: the Pareto set of the
    objectives (one objective: the best alone); ``objective``: each configuration's target
    statistics over its seeds; ``tests``: for every configuration compared, its most significant
    test (stopped or not)."""
    survivors: tuple[str, ...]
    stopped: dict[str, PairedTest]
    best: str | None
    front: tuple[str, ...]
    objective: dict[str, tuple[float | None, ...]]
    tests: dict[str, PairedTest] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"survivors": list(self.survivors), "best": self.best, "front": list(self.front),
                "stopped": {k: v.to_json() for k, v in self.stopped.items()},
                "objective": {k: list(v) for k, v in self.objective.items()},
                "tests": {k: v.to_json() for k, v in self.tests.items()}}


# ------------------------------------------------------------------------ the statistics
def _check_targets(targets: Sequence) -> tuple:
    targets = tuple(targets)
    if not targets:
        raise ValueError("racing needs at least one objective target")
    for t in targets:
        if getattr(t, "mode", None) not in ("max", "min"):
            raise ValueError(f"target {getattr(t, 'name', t)!r}: mode must be max or min")
    if all(t.stat in UNTESTABLE_STATS for t in targets):
        raise ValueError(f"racing cannot test {', '.join(t.name for t in targets)}: a paired test compares the "
                         f"seeds' values, and {', '.join(sorted(UNTESTABLE_STATS))} is their spread, not their "
                         "location; race on a statistic such as mean, median or mean_minus_std")
    return targets


@lru_cache(maxsize=1 << 16)
def _statistic(values: tuple[float, ...], target) -> float | None:
    """``target``'s statistic over the seeds' ``values`` (sorted: the order of seeds does not
    matter): ``aggregate_seed_metrics`` then ``objective_values``, as a sweep computes it."""
    from distfair.config.space import objective_values
    from distfair.metrics import aggregate_seed_metrics

    summary = aggregate_seed_metrics([{target.metric: v} for v in values])
    return objective_values([target], summary)[target.name]


def objective(rows: Sequence[Sequence[float]], targets: Sequence) -> tuple[float | None, ...]:
    """Each target's statistic over seeds, ``rows`` holding one value per target per seed;
    None where the statistic is undefined (a std of one seed)."""
    return tuple(_statistic(tuple(sorted(float(row[i]) for row in rows)), t) for i, t in enumerate(targets))


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


#: up to this many pairs, SciPy's ``wilcoxon(method="auto")`` answers ties or zeros with an exact
#: permutation test over all 2**n sign flips (above, with the normal approximation)
_PERMUTATION_UP_TO = 13


def _signed_rank_sum(d, axis):
    """SciPy's one-sided Wilcoxon statistic (the sum of the ranks of the positive differences),
    along ``axis``: what ``scipy.stats.wilcoxon`` computes, for many sign flips at once."""
    from scipy import stats

    return stats.wilcoxon(d, axis=axis, alternative="less", method="asymptotic").statistic


def _wilcoxon_less(d: np.ndarray):
    """``scipy.stats.wilcoxon(d, alternative="less")`` with the same p-value, faster. SciPy's
    ``method="auto"`` takes the exact distribution without ties or zeros and, with them and at
    most 13 pairs, an exact permutation test whose statistic it evaluates one sign flip at a
    time (~10x slower, which a replay of thousands of orders feels). Here that permutation test
    is ``scipy.stats.permutation_test`` itself, given the same statistic vectorised over flips
    (``tests/test_racing.py`` checks the p-values are SciPy's own)."""
    from scipy import stats

    nonzero = d[d != 0]
    if d.size > _PERMUTATION_UP_TO or (nonzero.size == d.size and np.unique(np.abs(d)).size == d.size):
        return stats.wilcoxon(d, alternative="less")
    return stats.permutation_test((d,), _signed_rank_sum, permutation_type="samples", vectorized=True,
                                  alternative="less")


@lru_cache(maxsize=1 << 16)
def _one_sided(differences: tuple[float, ...], test: str) -> tuple[float | None, float | None]:
    """(statistic, p) of SciPy's one-sided paired test that the oriented differences are
    below zero; (None, None) when every difference is zero or SciPy gives NaN (some SciPy
    versions raise for all-zero differences, others return NaN or 1 with a warning)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if not np.any(d):
        return None, None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            if test == "wilcoxon":
                result = _wilcoxon_less(d)
            else:          # d = x - y: ttest_rel(x, y) is ttest_rel(d, 0)
                result = stats.ttest_rel(d, np.zeros_like(d), alternative="less")
        except ValueError:
            return None, None
    statistic, p = float(result.statistic), float(result.pvalue)
    if math.isnan(p):
        return None, None
    return (None if math.isnan(statistic) else statistic), p


def paired_test(name: str, rows: Sequence[Sequence[float]], against: str, reference: Sequence[Sequence[float]],
                index: int, targets: Sequence, spec: RacingSpec) -> PairedTest:
    """The one-sided test, on target ``index``, that ``rows`` (configuration ``name``) are worse
    than ``reference`` (configuration ``against``), seed for seed (``rows[i]`` pairs with
    ``reference[i]``). Significant when p < alpha and ``name``'s objective over these seeds is
    strictly worse than ``against``'s."""
    target = targets[index]
    sign = 1.0 if target.mode == "max" else -1.0
    differences = tuple(sorted(sign * (float(r[index]) - float(q[index])) for r, q in zip(rows, reference)))
    statistic, p = _one_sided(differences, spec.test)
    mine = _statistic(tuple(sorted(float(r[index]) for r in rows)), target)
    theirs = _statistic(tuple(sorted(float(q[index]) for q in reference)), target)
    worse = mine is not None and theirs is not None and _better(theirs, mine, target.mode)
    return PairedTest(configuration=name, against=against, target=target.name, test=spec.test, n=len(differences),
                      statistic=statistic, pvalue=p, significant=p is not None and p < spec.alpha and worse)


# ------------------------------------------------------------------------------ the decision
def _rows(results: Mapping[str, Mapping[int, float | Sequence[float]]], n_targets: int) -> dict[str, dict[int, tuple]]:
    out = {}
    for name, seeds in results.items():
        rows = {}
        for seed, value in seeds.items():
            row = (value,) if isinstance(value, (int, float, np.floating, np.integer)) else tuple(value)
            if len(row) != n_targets:
                raise ValueError(f"{name}, seed {seed}: {len(row)} value(s) for {n_targets} target(s)")
            if not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in row):
                raise ValueError(f"{name}, seed {seed}: values must be finite numbers, got {row!r}")
            rows[int(seed)] = tuple(float(v) for v in row)
        out[str(name)] = rows
    return out


def choose(objectives: Mapping[str, Sequence[float | None]], targets: Sequence) -> tuple[str | None, tuple[str, ...]]:
    """(best, front) among the configurations whose objective is defined, by the rule of
    ``distfair.experiment.sweep_results.choose``: the Pareto set of the objective vectors, and
    its member best under the first target (one target: the best alone). Ties: input order."""
    from distfair.config.space import chosen_index

    names = [n for n, v in objectives.items() if all(x is not None for x in v)]
    if not names:
        return None, ()
    best, front = chosen_index([list(objectives[n]) for n in names], [t.mode for t in targets])
    return names[best], (tuple(names[i] for i in front) if len(targets) > 1 else (names[best],))


def race_step(results: Mapping[str, Mapping[int, float | Sequence[float]]], targets: Sequence,
              spec: RacingSpec) -> RaceDecision:
    """Which of the racing configurations stop after this wave (the rule: module docstring).

    ``results``: each surviving configuration's per-seed values, ``{seed index: value}`` with one
    value per target (a bare number for one target); ``targets``: the objective
    (``distfair.config.space.Target``). Raises ValueError for values that are not finite
    numbers, a wrong count per seed, or targets none of which a paired test can test."""
    targets = _check_targets(targets)
    rows = _rows(results, len(targets))
    objectives = {n: objective(list(r.values()), targets) for n, r in rows.items() if r}
    best, front = choose(objectives, targets)
    stopped: dict[str, PairedTest] = {}
    tests: dict[str, PairedTest] = {}
    testable = [i for i, t in enumerate(targets) if t.stat not in UNTESTABLE_STATS]
    for name, mine in rows.items():
        if best is None or name in front or name not in objectives or None in objectives[name]:
            continue
        rivals = [best] if len(targets) == 1 else [b for b in objectives if b != name]
        found: list[PairedTest] = []
        for rival in rivals:
            seeds = sorted(set(mine) & set(rows[rival]))
            if len(seeds) < spec.min_seeds:
                continue
            a, b = [mine[s] for s in seeds], [rows[rival][s] for s in seeds]
            if len(targets) > 1:
                here, there = objective(a, targets), objective(b, targets)
                if None in here or None in there or any(_better(x, y, t.mode)
                                                        for x, y, t in zip(here, there, targets)):
                    continue       # the rival is worse somewhere (or undefined): it dominates nothing
            found += [paired_test(name, a, rival, b, i, targets, spec) for i in testable]
        if not found:
            continue
        ranked = sorted(found, key=lambda t: (not t.significant, 2.0 if t.pvalue is None else t.pvalue))
        tests[name] = ranked[0]
        if ranked[0].significant:
            stopped[name] = ranked[0]
    survivors = tuple(n for n in rows if n not in stopped)
    return RaceDecision(survivors=survivors, stopped=stopped, best=best, front=front, objective=objectives,
                        tests=tests)


def next_wave(seeds_done: Mapping[str, int], spec: RacingSpec) -> dict[str, int]:
    """How many more seeds each survivor gets: up to ``min_seeds`` first, then ``wave`` more,
    never beyond ``max_seeds`` (0: it has all its seeds)."""
    out = {}
    for name, done in seeds_done.items():
        if done < spec.min_seeds:
            out[name] = spec.min_seeds - done
        else:
            out[name] = max(0, min(spec.wave, spec.max_seeds - done))
    return out
