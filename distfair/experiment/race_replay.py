"""Replaying racing on a finished fixed-N sweep (issue 30 §3): would racing have chosen the
same configuration, at what regret, for how many seed runs?

A fixed-N sweep records every configuration's N seeds. :func:`replay` reruns the racing
decisions of ``distfair.experiment.racing`` offline on those values, over many random orders of
the seeds: one permutation of the seed indices per order, the same for every configuration
(seeds are paired: seed ``i`` of one configuration trained with the same seed as seed ``i`` of
another). In each order every configuration gets the first ``min_seeds`` seeds, then
:func:`~distfair.experiment.racing.race_step` decides after each wave who stops, and the survivors
get ``wave`` more (:func:`~distfair.experiment.racing.next_wave`) until ``max_seeds``. The racing
choice is then made among the survivors on their ``max_seeds`` seeds by the sweep's own rule
(:func:`~distfair.experiment.racing.choose`). Against the **fixed-N choice** (the same rule over
all N seeds of every configuration) each order scores:

- *same*: racing chose the fixed-N choice;
- *within noise*: racing chose the fixed-N choice or a configuration that is not significantly
  worse than it over all N seeds: for no testable target does the one-sided paired test (the
  spec's test, at ``noise_alpha``, by default the spec's alpha) give p < alpha with a strictly
  worse objective (:func:`~distfair.experiment.racing.paired_test`);
- *regret*: the fixed-N choice's objective over all N seeds minus the racing choice's, signed so
  that a worse choice is positive (first target for several objectives: the one the choice rule
  ranks the front by);
- *seed fraction*: the seed runs racing trained, over N × configurations.

:func:`replay_grid` does this for several alpha and min_seeds (the same orders for every row:
the rows differ by the rule, not by luck); :func:`format_table` prints the rows.
:func:`recorded_sweep` reads a finished sweep's per-seed values through ``distfair.tracking``
(``distfair race-replay``). Everything else here is pure: numpy and the racing module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from distfair.experiment.errors import Refused
from distfair.experiment.racing import (UNTESTABLE_STATS, RacingSpec, _check_targets, choose, next_wave, objective,
                                        paired_test, race_step)


@dataclass(frozen=True)
class ReplaySummary:
    """One row of the replay table: the racing spec and what :func:`replay` measured over
    ``orders`` random seed orders (probabilities and the seed fraction are means over the
    orders; ``regret_p95`` is the 95th percentile)."""
    spec: RacingSpec
    orders: int
    n_configurations: int
    n_seeds: int
    fixed_choice: str
    within_noise: tuple[str, ...]         # the configurations within the fixed-N choice's noise
    p_same: float
    p_within_noise: float
    regret_mean: float
    regret_p95: float
    seed_fraction: float
    choices: dict[str, int] = field(default_factory=dict)     # how often racing chose each
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        s = self.spec
        return {"test": s.test, "alpha": s.alpha, "min_seeds": s.min_seeds, "max_seeds": s.max_seeds,
                "wave": s.wave, "orders": self.orders, "n_configurations": self.n_configurations,
                "n_seeds": self.n_seeds, "fixed_choice": self.fixed_choice, "within_noise": list(self.within_noise),
                "p_same": self.p_same, "p_within_noise": self.p_within_noise, "regret_mean": self.regret_mean,
                "regret_p95": self.regret_p95, "seed_fraction": self.seed_fraction,
                "seed_runs_mean": self.seed_fraction * self.n_seeds * self.n_configurations,
                "seed_runs_without_racing": self.n_seeds * self.n_configurations,
                "choices": dict(self.choices), "warnings": list(self.warnings)}


def _arrays(per_seed: Mapping[str, np.ndarray], n_targets: int) -> dict[str, np.ndarray]:
    if len(per_seed) < 2:
        raise ValueError(f"a replay needs at least two configurations, got {len(per_seed)}")
    out, n = {}, None
    for name, values in per_seed.items():
        a = np.asarray(values, dtype=float)
        if a.ndim == 1 and n_targets == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != n_targets:
            raise ValueError(f"{name}: per-seed values must have shape (n_seeds,) or (n_seeds, {n_targets}), "
                             f"got {np.shape(values)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: per-seed values must be finite")
        if n is not None and a.shape[0] != n:
            raise ValueError(f"every configuration needs the same seeds: {name} has {a.shape[0]}, others {n}")
        n = a.shape[0]
        out[str(name)] = a
    return out


def within_noise(arrays: Mapping[str, np.ndarray], fixed: str, targets: Sequence, spec: RacingSpec) -> tuple[str, ...]:
    """The configurations not significantly worse than ``fixed`` over all their seeds: no
    testable target on which ``spec``'s one-sided paired test at ``spec.alpha`` is significant
    (``fixed`` itself included). ``arrays``: as :func:`replay`'s ``per_seed``."""
    targets = _check_targets(targets)
    arrays = _arrays(arrays, len(targets))
    testable = [i for i, t in enumerate(targets) if t.stat not in UNTESTABLE_STATS]
    out = []
    for name, a in arrays.items():
        if name == fixed or not any(paired_test(name, a.tolist(), fixed, arrays[fixed].tolist(), i, targets,
                                                spec).significant for i in testable):
            out.append(name)
    return tuple(out)


def _race_once(arrays: Mapping[str, np.ndarray], order: np.ndarray, targets: Sequence,
               spec: RacingSpec) -> tuple[str | None, int]:
    """(racing's choice, seed runs used) with the seeds taken in ``order``."""
    alive = list(arrays)
    done = dict.fromkeys(alive, 0)
    used = 0
    while True:
        more = next_wave({n: done[n] for n in alive}, spec)
        if not any(more.values()):
            break
        for name, k in more.items():
            used += k
            done[name] += k
        if all(done[n] >= spec.max_seeds for n in alive) or len(alive) == 1:
            continue       # the last wave (or a lone survivor): nothing left to decide
        results = {n: {int(s): arrays[n][s] for s in order[:done[n]]} for n in alive}
        decision = race_step(results, targets, spec)
        alive = [n for n in alive if n not in decision.stopped]
    final = {n: objective(arrays[n][order[:spec.max_seeds]].tolist(), targets) for n in alive}
    return choose(final, targets)[0], used


def replay(per_seed: Mapping[str, np.ndarray], targets: Sequence, spec: RacingSpec, orders: int, rng_seed: int,
           noise_alpha: float | None = None) -> ReplaySummary:
    """Racing replayed over ``orders`` random seed orders (``numpy.random.default_rng(rng_seed)``:
    the same seed gives the same orders and the same summary). ``per_seed``: each
    configuration's recorded values, shape ``(n_seeds,)`` for one target or ``(n_seeds,
    n_targets)``, row ``i`` being seed ``i`` in every configuration. ``spec.max_seeds`` must not
    exceed the recorded seeds. ``noise_alpha``: the level of "within noise" (default: the
    spec's alpha). Raises ValueError for unequal seed counts, non-finite values, too few seeds."""
    targets = _check_targets(targets)
    arrays = _arrays(per_seed, len(targets))
    n_seeds = next(iter(arrays.values())).shape[0]
    if spec.max_seeds > n_seeds:
        raise ValueError(f"max_seeds {spec.max_seeds} is more than the {n_seeds} recorded seeds")
    if not isinstance(orders, int) or isinstance(orders, bool) or orders < 1:
        raise ValueError(f"orders must be an integer >= 1, got {orders!r}")
    full = {n: objective(a.tolist(), targets) for n, a in arrays.items()}
    fixed = choose(full, targets)[0]
    if fixed is None:
        raise ValueError("no configuration has a defined objective over all its seeds")
    noise_spec = spec if noise_alpha is None else RacingSpec(spec.min_seeds, spec.max_seeds, spec.test, noise_alpha,
                                                               spec.wave)
    near = within_noise(arrays, fixed, targets, noise_spec)
    sign = 1.0 if targets[0].mode == "max" else -1.0
    rng = np.random.default_rng(rng_seed)
    same = noisy = 0
    regrets, used_runs, choices = [], [], {}
    for _ in range(orders):
        chosen, used = _race_once(arrays, rng.permutation(n_seeds), targets, spec)
        choices[chosen] = choices.get(chosen, 0) + 1
        same += chosen == fixed
        noisy += chosen in near
        regrets.append(sign * (full[fixed][0] - full[chosen][0]) if chosen is not None else math.nan)
        used_runs.append(used)
    regret = np.asarray(regrets)
    return ReplaySummary(spec=spec, orders=orders, n_configurations=len(arrays), n_seeds=n_seeds, fixed_choice=fixed,
                         within_noise=near, p_same=same / orders, p_within_noise=noisy / orders,
                         regret_mean=float(np.mean(regret)), regret_p95=float(np.percentile(regret, 95)),
                         seed_fraction=float(np.mean(used_runs)) / (n_seeds * len(arrays)),
                         choices=dict(sorted(choices.items(), key=lambda kv: -kv[1])), warnings=tuple(spec.warnings()))


def replay_grid(per_seed: Mapping[str, np.ndarray], targets: Sequence, *, alphas: Sequence[float],
                min_seeds: Sequence[int], max_seeds: int | None = None, test: str = "wilcoxon", wave: int = 1,
                orders: int = 1000, rng_seed: int = 0, noise_alpha: float | None = None,
                progress: Callable[[ReplaySummary], None] | None = None) -> list[ReplaySummary]:
    """:func:`replay` for every (alpha, min_seeds), min_seeds first, each row on the same orders.
    ``max_seeds``: default all recorded seeds; ``progress``: called with each row when done.
    Raises ValueError for a bad spec (e.g. a min_seeds above max_seeds), naming it, before any
    row is replayed."""
    n_seeds = len(next(iter(per_seed.values()))) if per_seed else 0
    top = n_seeds if max_seeds is None else max_seeds
    specs = [RacingSpec(min_seeds=m, max_seeds=top, test=test, alpha=alpha, wave=wave)
             for m in min_seeds for alpha in alphas]
    rows = []
    for spec in specs:
        rows.append(replay(per_seed, targets, spec, orders, rng_seed, noise_alpha))
        if progress is not None:
            progress(rows[-1])
    return rows


def format_table(rows: Sequence[ReplaySummary]) -> str:
    """The replay rows as a fixed-width table (one line per alpha and min_seeds)."""
    head = (f"{'test':<8} {'alpha':>6} {'min':>4} {'max':>4}  {'P(same)':>7}  {'P(noise)':>8}  "
            f"{'regret mean':>11}  {'regret p95':>10}  {'seed runs':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r.spec
        lines.append(f"{s.test:<8} {s.alpha:>6g} {s.min_seeds:>4} {s.max_seeds:>4}  {r.p_same:>7.3f}  "
                     f"{r.p_within_noise:>8.3f}  {r.regret_mean:>11.4f}  {r.regret_p95:>10.4f}  "
                     f"{100 * r.seed_fraction:>8.1f}%")
    return "\n".join(lines)


# ----------------------------------------------------------- a recorded sweep, read through tracking
@dataclass
class RecordedSweep:
    """A finished sweep's per-seed objective values: ``per_seed[name]`` has one row per seed of
    ``seeds`` (sorted) and one column per target; ``run_ids[name]`` its configuration run;
    ``skipped``: why configurations were left out (not FINISHED)."""
    sweep_run_id: str
    experiment: str
    targets: list
    seeds: list[int]
    per_seed: dict[str, np.ndarray]
    run_ids: dict[str, str]
    skipped: list[str] = field(default_factory=list)


def recorded_sweep(uri: str, sweep_run_id: str) -> RecordedSweep:
    """Read a sweep run's FINISHED configuration runs and their FINISHED seed runs' objective
    metrics (``tracking.run_overview``, ``sweep_runs``, ``configuration_runs``,
    ``finished_seed_metrics``). Raises :class:`Refused` for a run that is not a sweep run, a
    sweep with fewer than two finished configurations, or configurations whose seeds (with
    every objective metric recorded) differ: racing pairs seeds."""
    from distfair import tracking
    from distfair.config.space import Target

    try:
        overview = tracking.run_overview(uri, sweep_run_id)
        tracking.check_sweep_run(uri, overview["experiment_id"], sweep_run_id)
    except LookupError as err:
        raise Refused(f"--sweep: {err}") from None
    experiment_id = overview["experiment_id"]
    found = tracking.sweep_runs(uri, experiment_id, sweep_run_id)
    try:
        targets = [Target(**t) for t in (found[0]["objective"] if found else [])]
    except TypeError:
        targets = []
    if not targets:
        raise Refused(f"sweep run {sweep_run_id} records no objective (its 'objective' param); was it written by "
                      "distfair sweep?")
    metrics = list(dict.fromkeys(t.metric for t in targets))
    per_seed, run_ids, seed_sets, skipped = {}, {}, {}, []
    for run in tracking.configuration_runs(uri, experiment_id, sweep_run_id):
        name = run.info.run_name or run.info.run_id
        if name in run_ids:
            name = f"{name} ({run.info.run_id[:8]})"
        if run.info.status != "FINISHED":
            skipped.append(f"{name}: {run.info.status} (a failed or unfinished configuration is never chosen)")
            continue
        values = tracking.finished_seed_metrics(uri, experiment_id, run.info.run_id)
        seeds = sorted(s for s, m in values.items()
                       if all(isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) for k in metrics))
        run_ids[name], seed_sets[name] = run.info.run_id, seeds
        per_seed[name] = np.array([[values[s][t.metric] for t in targets] for s in seeds], dtype=float)
    if len(per_seed) < 2:
        raise Refused(f"sweep run {sweep_run_id} has {len(per_seed)} finished configuration(s); a replay compares "
                      "at least two" + (f" (left out: {'; '.join(skipped)})" if skipped else ""))
    every = sorted(set().union(*seed_sets.values()))
    lacking = [f"{n} lacks {json.dumps(sorted(set(every) - set(s)))}" for n, s in seed_sets.items() if s != every]
    if lacking:
        raise Refused(f"the configurations of sweep {sweep_run_id} have unequal seed sets (finished seed runs with "
                      f"{', '.join(metrics)} recorded): of seeds {json.dumps(every)}, " + "; ".join(lacking)
                      + ". Racing pairs seeds, so the replay needs the same seeds in every configuration")
    return RecordedSweep(sweep_run_id=sweep_run_id, experiment=overview["experiment"], targets=targets,
                         seeds=seed_sets[next(iter(seed_sets))], per_seed=per_seed, run_ids=run_ids, skipped=skipped)
