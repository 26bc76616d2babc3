"""The ``space`` block of a configuration file: what ``distfair sweep`` searches and how it
judges a configuration from the distribution of its seeds. Plain Python (no Ray, no MLflow).

```yaml
space:
  params:                                  # dotted keys address any config value
    defense.lambda_sym: {type: float, low: 0.1, high: 10, log: true}
    train.lr: {type: float, low: 0.005, high: 0.05, log: true}
    train.batch_size: {type: int, low: 32, high: 128, step: 32}
    train.optimizer: {type: categorical, choices: [sgd, adam]}
    attack.eps: {grid: [0.05, 0.1]}         # grid: crossed with every sampled point
  objective: {metric: val_worst_class_acc, stat: mean_minus_std, k: 1.0, mode: max}
  # or a list of targets (multi-objective, Pareto set reported):
  # objective: [{metric: val_robust_acc, stat: mean, mode: max}, {metric: val_worst_class_acc, stat: std, mode: min}]
  search:
    sampler: tpe               # tpe (default single-objective), nsga2 (default multi-objective), random, grid
    seed: 0                    # sampler seed: same seed + same results -> same suggestions
    num_samples: 8             # sampled points; each is trained at every grid point
    max_concurrent: null       # configurations at once (default: what the cluster holds)
    early_stopping: null       # {metric: val_robust_acc, mode: max, grace_period: 2, reduction_factor: 2}
```

A configuration's seeds are summarised per metric (mean, std, min, max, ...); an objective
target is one statistic of one metric. ``mean_minus_std`` is mean − k·std (penalises
unstable configurations for a ``max`` target; use ``mean_plus_std`` for ``min``).

Selection never sees the test set (methods.md "Conventions": model selection uses a
validation split carved from the training data). Objectives and the early-stopping metric
may name only validation metrics: ``val_<m>`` (the primary evaluation attack on the
validation split, e.g. ``val_worst_class_acc``, ``val_robust_acc``, ``val_group_gap/<attr>``)
and ``val_clean_<m>``. A test metric is a configuration error whose message names the
validation metric to use; the test metrics of the chosen configuration are reported beside
the validation values it was chosen on, never used to choose it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

# the metric names and their roles (what a configuration reports, validation or test, the
# statistics over seeds): distfair.results.names, re-exported here for the space's callers
from distfair.config.limits import shown
from distfair.results.names import CURVES as _CURVES
from distfair.results.names import OBJECTIVE_STATISTICS as STATS
from distfair.results.names import (VAL_PREFIX, known_metric, known_test_metric, known_val_metric,  # noqa: F401
                                    matching_test_metric, metric_role, stat_name, validation_counterpart)

SAMPLERS = ("tpe", "nsga2", "random", "grid")
#: the most values of one grid or categorical dimension, and the most trials of one sweep (each
#: value is validated as a configuration before the sweep starts; each trial trains every seed)
MAX_CHOICES = 1000
MAX_TRIALS = 100_000
DIM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Dimension:
    key: str
    type: str                          # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()


def optuna_distribution(dim: Dimension):
    """The Optuna distribution of a dimension: the one mapping used by the Tune searcher
    (``distfair.distributed.sweep.build_searcher``) and by the Optuna study the sweep stores
    (``distfair.experiment.sweep``). A grid dimension is categorical over its values. Imports Optuna only
    when called."""
    import optuna

    if dim.type == "float":
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    if dim.type == "int":
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return optuna.distributions.CategoricalDistribution(list(dim.choices))


@dataclass(frozen=True)
class Target:
    metric: str
    stat: str = "mean"
    mode: str = "max"
    k: float = 1.0

    @property
    def name(self) -> str:
        """The key under which the value is reported everywhere (Tune/Optuna, ``--json``,
        ``trials.csv``, the sweep run's ``best.objective.<name>``), e.g.
        ``val_worst_class_acc_mean_minus_std``: MLflow's ``<metric>_<stat>`` naming of the
        configuration runs' seed statistics (``val_worst_class_acc_mean``), so one name means
        one number wherever it appears."""
        return stat_name(self.metric, self.stat)

    def value(self, summary: dict[str, dict]) -> float | None:
        """This target's statistic over the seeds, or None if undefined (e.g. std of one seed)."""
        s = summary.get(self.metric)
        if not s or not s.get("n"):
            return None
        if self.stat == "median":
            values = sorted(s["values"])
            n = len(values)
            return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        if self.stat in ("mean_minus_std", "mean_plus_std"):
            if s.get("std") is None:
                return None
            sign = -1.0 if self.stat == "mean_minus_std" else 1.0
            return s["mean"] + sign * self.k * s["std"]
        return s.get(self.stat)


def objective_values(targets: list[Target], summary: dict[str, dict]) -> dict[str, float | None]:
    """``{target name: value}`` of every target over one configuration's seed summaries."""
    return {t.name: t.value(summary) for t in targets}


@dataclass(frozen=True)
class EarlyStopping:
    metric: str
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SweepSpec:
    dims: list[Dimension] = field(default_factory=list)
    grid: list[Dimension] = field(default_factory=list)       # type "grid", choices = the grid values
    objective: list[Target] = field(default_factory=list)
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 4
    max_concurrent: int | None = None
    early_stopping: EarlyStopping | None = None
    #: the config document (as written, ``space`` removed) that trial values are applied to,
    #: so defaults that follow other values (an eval attack's ε) follow the searched value too
    base: dict = field(default_factory=dict)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1

    def grid_points(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid dimensions ([{}] when there are none)."""
        if not self.grid:
            return [{}]
        keys = [d.key for d in self.grid]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(d.choices for d in self.grid))]

    def total_trials(self) -> int:
        samples = 1 if self.sampler == "grid" else self.num_samples
        return samples * math.prod(len(d.choices) for d in self.grid)

    def to_dict(self) -> dict:
        return {"params": {d.key: d.__dict__ for d in self.dims + self.grid},
                "objective": [t.__dict__ for t in self.objective], "sampler": self.sampler, "seed": self.seed,
                "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
                "early_stopping": self.early_stopping.__dict__ if self.early_stopping else None}


def _not_a_selection_metric(metric: str, eval_names: list[str]) -> str:
    """Why ``metric`` may not be an objective, naming the ``val_`` metric to use instead."""
    examples = "e.g. val_worst_class_acc, val_robust_acc, val_acc_gap, val_clean_acc, val_group_gap/<attribute>"
    if known_test_metric(metric, eval_names):
        use = validation_counterpart(metric, eval_names)
        base = f"{metric!r} is a test-set metric, and selection never sees the test set; "
        if use:
            return base + f"use {use!r} (the same metric on the validation split carved from the training data)"
        primary = eval_names[0] if eval_names else "the first entry"
        return base + (f"only the clean and the primary evaluation ({primary!r}, the first eval.attacks entry) are "
                       f"repeated on the validation split: make {metric.partition('/')[0]!r} the first entry and "
                       f"use {VAL_PREFIX + metric.partition('/')[2]!r}")
    if metric_role(metric) == "training":
        return f"{metric!r} is a training quantity, not a validation metric; objectives name val_* metrics ({examples})"
    return f"unknown metric {metric!r}; objectives name validation metrics ({examples})"


def _number(raw: dict, key: str, where: str, problems: list, *, integer: bool = False):
    value = raw.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        problems.append((f"{where}.{key}", f"must be {'an integer' if integer else 'a number'}, got {shown(value)}"))
        return None
    return value


def _dimension(key: str, raw: Any, problems: list) -> Dimension | None:
    where = f"space.params.{key}"
    if not isinstance(raw, dict):
        problems.append((where, f"must be a mapping like {{type: float, low: 0.1, high: 1}}, got {shown(raw)}"))
        return None
    if "grid" in raw:
        extra = set(raw) - {"grid"}
        if extra:
            problems.append((where, f"a grid dimension takes only 'grid', got also {sorted(extra)}"))
        if not isinstance(raw["grid"], list) or not raw["grid"]:
            problems.append((f"{where}.grid", f"must be a non-empty list, got {shown(raw['grid'])}"))
            return None
        if len(raw["grid"]) > MAX_CHOICES:
            problems.append((f"{where}.grid", f"must have at most {MAX_CHOICES} values, got {len(raw['grid'])}"))
            return None
        return Dimension(key, "grid", choices=tuple(raw["grid"]))
    kind = raw.get("type")
    if kind not in DIM_TYPES:
        problems.append((f"{where}.type", f"must be one of {', '.join(DIM_TYPES)} (or use grid: [...]), "
                                          f"got {shown(kind)}"))
        return None
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}[kind]
    for extra in sorted(set(raw) - allowed):
        problems.append((f"{where}.{extra}", f"unknown key for a {kind} dimension; known: {', '.join(sorted(allowed))}"))
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append((f"{where}.choices", f"must be a non-empty list, got {shown(choices)}"))
            return None
        if len(choices) > MAX_CHOICES:
            problems.append((f"{where}.choices", f"must have at most {MAX_CHOICES} values, got {len(choices)}"))
            return None
        return Dimension(key, kind, choices=tuple(choices))
    integer = kind == "int"
    known = len(problems)
    low = _number(raw, "low", where, problems, integer=integer)
    high = _number(raw, "high", where, problems, integer=integer)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        problems.append((f"{where}.log", f"must be true or false, got {shown(log)}"))
    step = raw.get("step")
    if step is not None:
        step = _number(raw, "step", where, problems, integer=integer)
        if step is not None and step <= 0:
            problems.append((f"{where}.step", f"must be > 0, got {step}"))
        if step is not None and log:
            problems.append((f"{where}.step", "cannot be combined with log: true"))
    if low is None or high is None:
        return None
    if low > high:
        problems.append((f"{where}.low", f"must be <= high, got {low} > {high}"))
    if log is True and low <= 0:
        problems.append((f"{where}.low", f"must be > 0 with log: true, got {low}"))
    if len(problems) > known:       # said once: its extremes are not checked against the config as well
        return None
    return Dimension(key, kind, low=low, high=high, log=bool(log), step=step)


def _target(raw: Any, where: str, eval_names: list[str], problems: list) -> Target | None:
    if not isinstance(raw, dict):
        problems.append((where, f"must be a mapping like {{metric: val_worst_class_acc, stat: mean, mode: max}}, "
                               f"got {shown(raw)}"))
        return None
    for extra in sorted(set(raw) - {"metric", "stat", "mode", "k"}):
        problems.append((f"{where}.{extra}", "unknown key; known: metric, stat, mode, k"))
    metric, stat, mode, k = raw.get("metric"), raw.get("stat", "mean"), raw.get("mode", "max"), raw.get("k", 1.0)
    ok = True
    if not isinstance(metric, str) or not known_val_metric(metric):
        problems.append((f"{where}.metric", _not_a_selection_metric(str(metric), eval_names)))
        ok = False
    if stat not in STATS:
        problems.append((f"{where}.stat", f"unknown stat {stat!r}; known: {', '.join(STATS)}"))
        ok = False
    if mode not in ("max", "min"):
        problems.append((f"{where}.mode", f"must be max or min, got {shown(mode)}"))
        ok = False
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not math.isfinite(k) or k < 0:
        problems.append((f"{where}.k", f"must be a number >= 0, got {shown(k)}"))
        ok = False
    return Target(metric, stat, mode, float(k)) if ok else None


SEARCH_KEYS = ("sampler", "seed", "num_samples", "max_concurrent", "early_stopping")


def parse_space(raw: Any, *, config_keys: set[str], eval_names: list[str]) -> tuple[SweepSpec, list[tuple[str, str]]]:
    """Validate a ``space`` block. ``config_keys`` are the dotted keys the resolved config has
    (a dimension must address one of them). Returns the spec and the problems found."""
    problems: list[tuple[str, str]] = []
    spec = SweepSpec()
    if not isinstance(raw, dict) or not raw:
        return spec, [("space", "distfair sweep needs a `space` block with `params` and `objective`")]
    for extra in sorted(set(raw) - {"params", "objective", "search"}):
        problems.append((f"space.{extra}", "unknown key; known: params, objective, search"))
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        problems.append(("space.params", "must map dotted config keys to dimensions, e.g. train.lr: {type: float, ...}"))
        params = {}
    for key, dim_raw in params.items():
        if key not in config_keys:
            problems.append((f"space.params.{key}", "does not address a config value (dotted keys such as "
                                                    "defense.lambda_sym, attack.eps, train.lr)"))
            continue
        dim = _dimension(key, dim_raw, problems)
        if dim is not None:
            (spec.grid if dim.type == "grid" else spec.dims).append(dim)
    objective = raw.get("objective")
    targets = objective if isinstance(objective, list) else [objective] if objective is not None else []
    if not targets:
        problems.append(("space.objective", "required: {metric, stat, mode} or a list of them"))
    for i, t in enumerate(targets):
        where = "space.objective" if not isinstance(objective, list) else f"space.objective[{i}]"
        target = _target(t, where, eval_names, problems)
        if target is not None:
            spec.objective.append(target)
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        problems.append(("space.search", f"must be a mapping, got {shown(search)}"))
        search = {}
    for extra in sorted(set(search) - set(SEARCH_KEYS)):
        problems.append((f"space.search.{extra}", f"unknown key; known: {', '.join(SEARCH_KEYS)}"))
    sampler = search.get("sampler", "nsga2" if len(targets) > 1 else "tpe")
    if sampler not in SAMPLERS:
        problems.append(("space.search.sampler", f"must be one of {', '.join(SAMPLERS)}, got {shown(sampler)}"))
    elif sampler == "grid" and spec.dims:
        problems.append(("space.search.sampler", "grid searches only grid dimensions; "
                                                 f"{', '.join(d.key for d in spec.dims)} are sampled"))
    elif sampler != "grid" and not spec.dims and not problems:
        sampler = "grid"                   # nothing to sample: the grid is the whole search
    spec.sampler = sampler
    for key, minimum, maximum in (("seed", 0, 2**63 - 1), ("num_samples", 1, MAX_TRIALS),
                                  ("max_concurrent", 1, MAX_TRIALS)):
        if key in search and search[key] is not None:
            value = search[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append((f"space.search.{key}", f"must be an integer >= {minimum}, got {shown(value)}"))
            elif value > maximum:
                problems.append((f"space.search.{key}", f"must be <= {maximum}, got {shown(value)}"))
            else:
                setattr(spec, key, value)
    if not problems and spec.total_trials() > MAX_TRIALS:
        problems.append(("space", f"{spec.total_trials()} trials (grid points x samples); at most {MAX_TRIALS}"))
    es = search.get("early_stopping")
    if es is not None:
        spec.early_stopping = _early_stopping(es, eval_names, problems)
    return spec, problems


def _early_stopping(raw: Any, eval_names: list[str], problems: list) -> EarlyStopping | None:
    where = "space.search.early_stopping"
    if not isinstance(raw, dict):
        problems.append((where, f"must be a mapping like {{metric: val_robust_acc, mode: max}}, got {shown(raw)}"))
        return None
    for extra in sorted(set(raw) - {"metric", "mode", "grace_period", "reduction_factor"}):
        problems.append((f"{where}.{extra}", "unknown key; known: metric, mode, grace_period, reduction_factor"))
    metric = raw.get("metric")
    if metric not in _CURVES:
        problems.append((f"{where}.metric", f"must be a per-epoch validation metric ({', '.join(_CURVES)}), "
                                            f"got {shown(metric)}"))
        return None
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        problems.append((f"{where}.mode", f"must be max or min, got {shown(mode)}"))
    grace, factor = raw.get("grace_period", 1), raw.get("reduction_factor", 2)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1:
        problems.append((f"{where}.grace_period", f"must be an integer >= 1, got {shown(grace)}"))
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        problems.append((f"{where}.reduction_factor", f"must be an integer >= 2, got {shown(factor)}"))
    return EarlyStopping(metric, mode, grace, factor)


def pareto_front(points: list[list[float]], modes: list[str]) -> list[int]:
    """Indices of the non-dominated points. ``a`` dominates ``b`` when it is at least as good
    in every objective (under each objective's mode) and strictly better in one."""
    def better_or_equal(a, b):
        return all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes))

    def strictly_better(a, b):
        return any((x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes))

    return [i for i, p in enumerate(points)
            if not any(better_or_equal(q, p) and strictly_better(q, p) for j, q in enumerate(points) if j != i)]


def chosen_index(points: list[list[float]], modes: list[str]) -> tuple[int, list[int]]:
    """(best, front) as indices of ``points`` (one objective vector each, none empty): the
    Pareto front (:func:`pareto_front`) and its member best under the first objective (the
    first of equal ones). The sweep's choice and racing's use this one rule."""
    front = pareto_front(points, modes)
    sign = 1.0 if modes[0] == "max" else -1.0
    return max(front, key=lambda i: sign * points[i][0]), front
