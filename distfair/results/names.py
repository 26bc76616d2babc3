"""The metric names: how every value a run produces is keyed, in one place.

Over 400 lines because every naming rule is here on purpose: renaming a metric touches this file only.

A seed run logs each value of its final evaluation under a flat MLflow key whose parts say
where it comes from; :class:`MetricKey` holds those parts as fields and writes and reads the
key (:meth:`MetricKey.mlflow_key`, :meth:`MetricKey.parse`). The grammar::

    <key>      := <training> | [val_] <measured> [_<stat>]
    <measured> := clean_<name>              the clean evaluation     clean_acc, val_clean_group_gap/gender
                | <evaluation>/<name>       an eval.attacks entry    pgd20/robust_acc (test split only)
                | <name>                    bare: the primary entry  robust_acc, val_worst_class_acc
                                            (logged a second time), a summary spanning
                                            evaluations (auc_acc), a per-epoch curve (val_sym)
    <name>     := <metric> | <family>/<field>[/<field>]   group_acc/gender/F, stage_acc/smoothed
    <training> := train_* | defense_* | finish_* | lr | epoch_time_s | *_time_s   (kept whole)
    <family>   := ... | <bootstrapped>_lo | <bootstrapped>_hi   a speech summary's interval over
                                            speakers: fpr_parity_lo/gender, group_auc_fpr_hi/gender/F

The ends of a speech summary's speaker-bootstrap interval (one seed run's interval over the
speakers of its test set) are families of their own, ``<family>_lo`` and ``<family>_hi``
(:data:`BOOTSTRAP_BOUNDS`, :data:`BOOTSTRAPPED_FAMILIES`, :func:`bound_family`,
:func:`bound_key`), with the fields of ``<family>``; they are not statistics over seeds (those
are ``<key>_<stat>`` suffixes of the whole key).

Under an attack (and bare) the evaluation's accuracy ``acc`` is named ``robust_acc``
(:data:`ATTACKED_NAMES`); the validation split repeats the clean and the primary evaluation
only (``val_<entry>/...`` is never logged). A configuration run logs, per seed-run key, its
statistics over the seeds as ``<key>_<stat>`` (:data:`SEED_STATISTICS`, :func:`stat_name`).

Besides the grammar: the headline metric lists that the CLI, the configuration run's
description and the report show, the statistic names (:data:`SEED_STATISTICS`,
:data:`OBJECTIVE_STATISTICS`, :data:`SPREAD_STATISTICS`), the roles of a key (validation,
test, training: :func:`metric_role`, :func:`known_val_metric`, ...), which way is better per
family (:data:`DIRECTION`) and the declared range of each family (:data:`METRIC_RANGES`,
:func:`metric_range`, :func:`metric_family`: defined in ``distfair.metrics``, where the seed
statistics that clip their intervals need them and which cannot import ``results``;
re-exported here, as are the two key prefixes they strip, :data:`VAL_PREFIX` and
:data:`CLEAN_PREFIX`).

Pure Python: no MLflow, no Ray, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Collection, Sequence

from distfair.evaluation.summaries import nested_families
from distfair.metrics import (BOOTSTRAP_BOUNDS, BOOTSTRAPPED_FAMILIES, CLEAN_PREFIX, INTERVAL_NOTE, METRIC_RANGES,
                              UNBOUNDED_FAMILIES, UNIT_INTERVAL_FAMILIES, VAL_PREFIX, bound_family, metric_family,
                              metric_range)

__all__ = [
    "BOOTSTRAPPED_FAMILIES", "BOOTSTRAP_BOUNDS", "bound_family", "bound_key",
    "ACC", "ACCURACY_NAMES", "ATTACKED_NAMES", "CI95_HALFWIDTH", "CLEAN", "CLEAN_PREFIX", "CURVES", "DEFAULT_REPORT_METRICS",
    "DIRECTION", "EPOCH_VALIDATION", "EVALUATION_METRICS", "HEADLINE", "INTERVAL_NOTE", "MAIN_FAMILIES",
    "MAIN_METRICS", "METRIC_RANGES", "MetricKey", "NESTED_FAMILIES", "OBJECTIVE_STATISTICS", "PARENT_COUNTS",
    "PER_CLASS_ACC", "ROBUST_ACC", "RUN_REPORT_FIELDS", "SEED_STATISTICS", "SPEECH_REPORT_METRICS", "SPLITS",
    "SEPARATOR", "SPREAD_STATISTICS", "STATISTICS", "SUBGROUP_HEADLINE", "SUMMARY_HEADLINE", "SUMMARY_HEADLINE_FAMILIES", "TEST",
    "TIMINGS", "TRAIN", "TRAINING_NAMES", "TRAINING_PREFIXES", "TRAIN_ATTACK", "TRAIN_PREFIX", "UNBOUNDED_FAMILIES",
    "UNIT_INTERVAL_FAMILIES", "VAL", "VAL_PREFIX", "attacked_name", "direction", "evaluation_label", "headline",
    "is_nested_family", "is_training_key",
    "key_prefix", "known_metric", "known_test_metric", "known_val_metric", "matching_test_metric",
    "metric_family", "metric_range", "metric_role", "per_evaluation_metric", "split_fields", "stat_name",
    "unprefixed", "validation_counterpart",
]

# --------------------------------------------------------------------------- the grammar
TEST, VAL, TRAIN = "test", "val", "train"
SPLITS = (TEST, VAL, TRAIN)
#: the clean evaluation (``clean_<m>``); every other evaluation is an ``eval.attacks`` entry
CLEAN = "clean"
#: the per-epoch validation under the cheap training attack (``val_robust_acc`` & co. with step=epoch)
TRAIN_ATTACK = "train_attack"
#: what separates an evaluation from its metric, and the nested fields of a family
SEPARATOR = "/"
#: training values of the per-epoch history (``train_loss``)
TRAIN_PREFIX = "train_"
#: an evaluation's accuracy, and its name under an attack (and bare)
ACC, ROBUST_ACC = "acc", "robust_acc"
ATTACKED_NAMES = {ACC: ROBUST_ACC}
#: accuracy goes by these names (a report column of any of them tabulates ``acc``)
ACCURACY_NAMES = (ACC, ROBUST_ACC, CLEAN_PREFIX + ACC)
#: the per-class accuracies of an evaluation's metrics: an artifact, never a metric key
PER_CLASS_ACC = "per_class_acc"
#: metric families whose keys nest ``<family>/<field>[/<field>]`` (an ensemble's stages, and the
#: families every evaluation summary declares: ``group_acc/<attr>/<group>``, ...) -> the fields
NESTED_FAMILIES: dict[str, tuple[str, ...]] = {"stage_acc": ("stage",), **nested_families()}
#: the metrics every evaluation (clean or one attack) reports (``distfair.metrics.fairness_metrics``)
EVALUATION_METRICS = ("acc", "worst_class_acc", "acc_gap", "nsd", "worst10_acc", "max_asym_gap", "sym_loss",
                      "tgt_max", "tgt_min", "tgt_std")
#: the metrics of training itself (neither validation nor test): keys with these prefixes, and these names
TRAINING_PREFIXES = (TRAIN_PREFIX, "defense_", "finish_")
TRAINING_NAMES = ("lr", "epoch_time_s", "train_time_s", "val_time_s", "eval_time_s", "finish_time_s")
#: timings of the final step: key -> the split it measures
TIMINGS = {"train_time_s": TRAIN, "val_time_s": VAL, "eval_time_s": TEST}
#: per-epoch validation curves (``step = epoch``): what early stopping can watch
CURVES = (VAL_PREFIX + CLEAN_PREFIX + ACC, VAL_PREFIX + ROBUST_ACC)
#: per-epoch validation keys of ``train_epoch`` -> (evaluation, metric)
EPOCH_VALIDATION = {CURVES[0]: (CLEAN, ACC), CURVES[1]: (TRAIN_ATTACK, ACC),
                    "val_sym": (TRAIN_ATTACK, "sym_loss"), "val_soft_sym": (TRAIN_ATTACK, "soft_sym_loss"),
                    "val_asym_gap": (TRAIN_ATTACK, "max_asym_gap")}

# ------------------------------------------------------------------------- the statistics
#: the statistics over seeds of every metric: the configuration run logs ``<key>_<stat>``
#: (``distfair.tracking``), the configuration record has them per entry, a sweep reports them
SEED_STATISTICS = ("mean", "std", "min", "max", "ci95_low", "ci95_high")
#: what an objective target may take of a metric over the seeds (``space.objective[].stat``)
OBJECTIVE_STATISTICS = ("mean", "std", "min", "max", "median", "mean_minus_std", "mean_plus_std", "ci95_low",
                        "ci95_high")
#: the spread of an objective metric (and of its test counterpart) in a sweep's trials.csv and summary
SPREAD_STATISTICS = ("mean", "std", "n", "ci95_low", "ci95_high")
#: the half-width of a metric's 95% interval (unclipped) that an adaptive configuration stopped on:
#: ``val_worst_class_acc_ci95_halfwidth`` on the configuration run (``seeds: {until: ...}``)
CI95_HALFWIDTH = "ci95_halfwidth"
#: every statistic a ``<key>_<stat>`` name may end with (:meth:`MetricKey.parse` with ``statistic=True``)
STATISTICS = tuple(dict.fromkeys(OBJECTIVE_STATISTICS + SPREAD_STATISTICS + (CI95_HALFWIDTH,)))
#: what ``RunReport.to_json`` keeps of each metric's summary (``distfair run --json``)
RUN_REPORT_FIELDS = ("mean", "std", "min", "max", "values")
#: the configuration run's counts beside the statistics (``n_waves``: adaptive seeds only)
PARENT_COUNTS = ("n_seeds", "n_failed", "n_waves")

# ----------------------------------------------------------------------- headline metrics
#: ``distfair run``'s seeds table, in this order (those the runs have)
HEADLINE = ("clean_acc", "robust_acc", "clean_worst_class_acc", "worst_class_acc", "acc_gap", "nsd",
            "worst10_acc", "max_asym_gap", "sym_loss", "tgt_max", "tgt_min", "tgt_std", "max_bipartition_asym")
#: the primary attack's subgroup summaries, one row per attribute
SUBGROUP_HEADLINE = ("group_gap/", "max_group_asym/")
#: cross-evaluation summaries' headline metrics, shown when a run has them (speech paper §3)
SUMMARY_HEADLINE = ("auc_acc", "clean_false_rejection_rate", "auc_fpr")
SUMMARY_HEADLINE_FAMILIES = ("defense_parity/", "fpr_parity/")
#: the configuration run's headline metrics (its description and seed-stability figure): accuracy
#: clean and under the primary attack, the worst class (Sy-FAR §2 / Table 1: worst-class accuracy,
#: the best-worst gap ``acc_gap``, the normalised std ``nsd`` of the class accuracies and the
#: largest pairwise confusion asymmetry ``max_asym_gap``), and an abstaining predictor's rejection rate
MAIN_METRICS = ("clean_acc", "robust_acc", "clean_worst_class_acc", "worst_class_acc", "acc_gap", "nsd",
                "max_asym_gap", "rejection_rate")
#: then, when the evaluation has them, its primary per-attribute and speech (paper 003 §3)
#: fairness summaries: the subgroup gap per attribute, AUC_acc and the defense parity
MAIN_FAMILIES = ("group_gap/", "auc_acc", "defense_parity/")
#: the metrics of a report table when none are asked for (those a configuration has)
DEFAULT_REPORT_METRICS = ("robust_acc", "worst_class_acc", "acc_gap", "nsd")
#: speech paper 003 summaries: added to the report's default metrics when the runs have them
SPEECH_REPORT_METRICS = ("auc_acc", "defense_parity", "auc_fpr", "fpr_parity")
#: metric family -> which way is better ("max" or "min"); families not listed get no best cell
DIRECTION: dict[str, str] = {
    **dict.fromkeys(("acc", "worst_class_acc", "worst10_acc", "group_acc", "auc_acc", "group_auc_acc", "tgt_min",
                     "stage_acc", "auc_acc_logeps", "group_auc_acc_logeps"), "max"),
    **dict.fromkeys(("acc_gap", "nsd", "max_asym_gap", "sym_loss", "soft_sym_loss", "tgt_max", "tgt_std",
                     "max_bipartition_asym", "group_gap", "max_group_asym", "defense_parity", "fpr_parity",
                     "auc_fpr", "group_auc_fpr", "rejection_rate", "group_rejection", "clean_false_rejection_rate",
                     "target_success_rate", "defense_parity_logeps"), "min"),
}


# ------------------------------------------------------------------------------ helpers
def attacked_name(metric: str) -> str:
    """An evaluation's metric as an attacked (or bare) key names it: ``acc`` -> ``robust_acc``."""
    return ATTACKED_NAMES.get(metric, metric)


def _evaluation_metric(name: str, evaluation: str | None) -> str:
    """Inverse of :func:`attacked_name` for a key of ``evaluation``: ``robust_acc`` -> ``acc``."""
    if evaluation == CLEAN:
        return name
    return next((m for m, attacked in ATTACKED_NAMES.items() if attacked == name), name)


def is_training_key(key: str) -> bool:
    """A quantity of training itself (losses, learning rate, defense values, timings), by
    :data:`TRAINING_PREFIXES` and :data:`TRAINING_NAMES`, except a key of a declared metric family
    (``defense_parity/<attr>`` is a test metric of the speech summaries, ``defense_<value>`` a
    defense's training value)."""
    family = key.partition(SEPARATOR)[0]
    return ((key.startswith(TRAINING_PREFIXES) or key in TRAINING_NAMES)
            and family not in METRIC_RANGES and family not in NESTED_FAMILIES)


def metric_role(name: str) -> str:
    """``validation`` (``val_*``), ``training`` (losses, learning rate, timings) or ``test``
    (everything the final evaluation of the test set reports)."""
    if is_training_key(name):
        return "training"
    if name.startswith(VAL_PREFIX):
        return "validation"
    return "test"


def key_prefix(split: str, evaluation: str | None) -> str:
    """What a key of ``evaluation`` on ``split`` starts with: ``clean_``, ``pgd20/``,
    ``val_clean_``, ``val_`` or ``""`` (bare, test)."""
    if evaluation == CLEAN:
        head = CLEAN_PREFIX
    elif evaluation is None:
        head = ""
    else:
        head = evaluation + SEPARATOR
    return (VAL_PREFIX if split == VAL else "") + head


def unprefixed(key: str) -> str:
    """``key`` without its split and clean prefix (the first of ``val_clean_``, ``val_``,
    ``clean_`` it starts with); an evaluation's ``<name>/`` stays."""
    for prefix in (VAL_PREFIX + CLEAN_PREFIX, VAL_PREFIX, CLEAN_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def split_fields(metric: str) -> tuple[str, dict]:
    """The metric family and its fields of one key of an evaluation's metric dict. Subgroup
    and stage keys nest their (metric-safe, so '/'-free) attribute, group or stage label
    (:data:`NESTED_FAMILIES`); a key of a family not nested stays whole as the metric name:
    ``group_acc/gender/F`` -> ``("group_acc", {"attribute": "gender", "group": "F"})``."""
    family, _, rest = metric.partition(SEPARATOR)
    names = NESTED_FAMILIES.get(family)
    if names is None or not rest:
        return metric, {}
    parts = rest.split(SEPARATOR, len(names) - 1)
    return family, dict(zip(names, parts))


def is_nested_family(segment: str) -> bool:
    """Whether ``segment`` is a family whose keys nest fields (so not an evaluation's name)."""
    return bool(NESTED_FAMILIES.get(segment))


def stat_name(metric: str, stat: str) -> str:
    """The name of one statistic over seeds of one metric, ``<metric>_<stat>``
    (``val_worst_class_acc_mean``, ``worst_class_acc_ci95_low``): the naming of the MLflow
    configuration runs (``distfair.tracking.log_parent_summary``), used by everything a sweep
    reports."""
    return f"{metric}_{stat}"


# --------------------------------------------------------------------------- MetricKey
@dataclass(frozen=True)
class MetricKey:
    """One metric as fields; :meth:`mlflow_key` is its MLflow name, :meth:`parse` the inverse.

    - ``split``: ``test``, ``val`` or ``train`` (a quantity of training itself: its ``name``
      is the whole key, ``train_loss``, ``lr``, ``eval_time_s``);
    - ``evaluation``: ``clean``, an ``eval.attacks`` entry name (test split only), or None:
      bare, i.e. the primary evaluation attack (logged a second time without its name; on
      the validation split the only attack), a summary spanning evaluations (``auc_acc``),
      a per-epoch curve (``val_sym``) or training;
    - ``name``: the metric as the key spells it after the prefixes: ``acc`` (clean),
      ``robust_acc`` (attacked or bare; :meth:`of` renames an evaluation's ``acc``),
      ``worst_class_acc``, nested fields included (``group_gap/gender``);
    - ``statistic``: None (a seed run's value) or the statistic over seeds a configuration run
      logs (``mean``, ``ci95_low``, ...: :data:`STATISTICS`).
    """
    split: str
    evaluation: str | None
    name: str
    statistic: str | None = None

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.evaluation is not None and (not isinstance(self.evaluation, str) or not self.evaluation):
            raise ValueError(f"evaluation must be None or a non-empty string, got {self.evaluation!r}")
        if self.split == TRAIN and self.evaluation is not None:
            raise ValueError(f"a training quantity has no evaluation, got {self.evaluation!r}")
        if self.statistic is not None and self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; known: {', '.join(STATISTICS)}")

    @classmethod
    def of(cls, split: str, evaluation: str | None, metric: str, statistic: str | None = None) -> "MetricKey":
        """The key of ``metric``, a name of an evaluation's metric dict (``acc``,
        ``group_gap/gender``), measured by ``evaluation`` (None: bare, the primary one) on
        ``split``: an attacked or bare ``acc`` is named ``robust_acc``."""
        return cls(split, evaluation, metric if evaluation == CLEAN else attacked_name(metric), statistic)

    def mlflow_key(self) -> str:
        """The MLflow metric name: ``clean_acc``, ``pgd20/robust_acc``, ``robust_acc``,
        ``val_clean_worst_class_acc``, ``val_group_gap/gender``, ``train_loss``,
        ``val_worst_class_acc_mean``."""
        key = self.name if self.split == TRAIN else key_prefix(self.split, self.evaluation) + self.name
        return key if self.statistic is None else stat_name(key, self.statistic)

    def __str__(self) -> str:
        return self.mlflow_key()

    @property
    def metric(self) -> str:
        """The evaluation's own metric name (the result records' ``metric`` with its fields):
        ``acc`` for clean and attacked accuracy alike."""
        return self.name if self.split == TRAIN else _evaluation_metric(self.name, self.evaluation)

    @property
    def family(self) -> str:
        """The metric family as the result records name it: ``group_acc`` of
        ``pgd20/group_acc/gender/F``, ``acc`` of ``pgd20/robust_acc``."""
        return split_fields(self.metric)[0]

    @property
    def fields(self) -> dict[str, str]:
        """The nested fields: ``{"attribute": "gender", "group": "F"}``, ``{"stage": ...}`` or ``{}``."""
        return split_fields(self.metric)[1]

    def with_statistic(self, statistic: str | None) -> "MetricKey":
        return replace(self, statistic=statistic)

    @classmethod
    def parse(cls, key: str, *, statistic: bool = False, evaluations: Collection[str] | None = None) -> "MetricKey":
        """The fields of the MLflow name ``key`` (:meth:`mlflow_key` is the inverse).

        ``statistic``: ``key`` is a configuration run's ``<key>_<stat>`` (the suffix is read
        only then: ``tgt_std`` is a metric, ``tgt_std_std`` its std). ``evaluations``: the
        ``eval.attacks`` entry names; without them a ``<first>/...`` key is an evaluation's
        unless ``<first>`` is a nested family (:data:`NESTED_FAMILIES`).

        Raises:
            ValueError: ``key`` is not one the runs log (empty names or fields, a missing or
                unknown statistic, an attacked ``acc`` instead of ``robust_acc``, an attack
                evaluation on the validation split, an evaluation not in ``evaluations``).
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"a metric key must be a non-empty string, got {key!r}")
        base, stat = key, None
        if statistic:
            stat = next((s for s in sorted(STATISTICS, key=len, reverse=True)
                         if key.endswith("_" + s) and len(key) > len(s) + 1), None)
            if stat is None:
                raise ValueError(f"{key!r}: no statistic suffix (_{', _'.join(STATISTICS)})")
            base = key[:-len(stat) - 1]
        if is_training_key(base):
            return cls(TRAIN, None, base, stat)
        split, rest = (VAL, base[len(VAL_PREFIX):]) if base.startswith(VAL_PREFIX) else (TEST, base)
        evaluation = None
        if rest.startswith(CLEAN_PREFIX):
            evaluation, rest = CLEAN, rest[len(CLEAN_PREFIX):]
        elif SEPARATOR in rest:
            first, _, after = rest.partition(SEPARATOR)
            named = first in evaluations if evaluations is not None else not is_nested_family(first)
            if named:
                if split == VAL:
                    raise ValueError(f"{key!r}: the validation split logs the clean and the primary evaluation "
                                     f"only, as val_clean_<metric> and val_<metric>, never val_<evaluation>/...")
                evaluation, rest = first, after
            elif evaluations is not None and not is_nested_family(first):
                raise ValueError(f"{key!r}: {first!r} is neither an evaluation ({', '.join(evaluations) or 'none'}) "
                                 "nor a nested metric family")
        if not rest or any(not part for part in rest.split(SEPARATOR)):
            raise ValueError(f"{key!r}: empty metric name or field")
        if evaluation is not None and not evaluation:
            raise ValueError(f"{key!r}: empty evaluation name")
        if evaluation != CLEAN and rest in ATTACKED_NAMES:
            raise ValueError(f"{key!r}: under an attack (and bare) {rest!r} is named {attacked_name(rest)!r}")
        return cls(split, evaluation, rest, stat)


# ----------------------------------------------------------------------- roles of a key
_EVAL_EXTRA = tuple(f for f, fields in nested_families().items() if not fields)
_EVAL_NESTED = tuple(f"{f}{SEPARATOR}" for f, fields in NESTED_FAMILIES.items() if fields)


def per_evaluation_metric(metric: str) -> bool:
    """A metric every evaluation (clean or one attack) reports, in the bare naming of the
    primary attack: ``robust_acc``, ``worst_class_acc``, ``group_gap/<attr>``, ..."""
    bare = {attacked_name(m) for m in EVALUATION_METRICS} | set(_EVAL_EXTRA)
    return metric in bare or (metric.startswith(_EVAL_NESTED) and not metric.endswith(SEPARATOR))


def _clean_metric(name: str) -> bool:
    """``clean_acc``, ``clean_worst_class_acc``, ``clean_group_gap/<attr>``, ..."""
    if not name.startswith(CLEAN_PREFIX):
        return False
    rest = name[len(CLEAN_PREFIX):]
    return rest == ACC or (rest != ROBUST_ACC and per_evaluation_metric(rest))


def known_val_metric(name: str) -> bool:
    """Whether a configuration reports the validation metric ``name``: the per-epoch curves
    and the final validation pass (clean and the primary evaluation attack)."""
    if name in CURVES:
        return True
    if not name.startswith(VAL_PREFIX):
        return False
    rest = name[len(VAL_PREFIX):]
    return per_evaluation_metric(rest) or _clean_metric(rest)


def known_test_metric(name: str, eval_names: list[str]) -> bool:
    """Whether a configuration reports the test metric ``name`` (final evaluation)."""
    if per_evaluation_metric(name) or _clean_metric(name):
        return True
    prefix, _, rest = name.partition(SEPARATOR)
    return prefix in eval_names and per_evaluation_metric(rest)


def known_metric(name: str, eval_names: list[str]) -> bool:
    """Whether a configuration reports ``name`` at all (validation, test or training)."""
    return known_val_metric(name) or known_test_metric(name, eval_names) or metric_role(name) == "training"


def validation_counterpart(name: str, eval_names: list[str]) -> str | None:
    """The validation metric that stands for the test metric ``name`` (None if there is none:
    only the clean and the primary evaluation are repeated on the validation split)."""
    if per_evaluation_metric(name) or _clean_metric(name):
        return VAL_PREFIX + name
    prefix, _, rest = name.partition(SEPARATOR)
    if eval_names and prefix == eval_names[0] and per_evaluation_metric(rest):
        return VAL_PREFIX + rest
    return None


def matching_test_metric(name: str) -> str | None:
    """The test metric reported beside the validation metric ``name`` (``val_robust_acc`` →
    ``robust_acc``, ``val_clean_acc`` → ``clean_acc``); None for a name that is not one."""
    return name[len(VAL_PREFIX):] if name.startswith(VAL_PREFIX) else None


def evaluation_label(key: str, keys, primary: str | None) -> str:
    """``key`` as a table names it: a key of the primary evaluation attack (the first
    ``eval.attacks`` entry), which the seed runs log bare as well as ``<primary>/<key>``,
    gets the attack's name, ``robust_acc (pgd20)``; every other key already says where it
    comes from (``clean_acc``, ``fgsm/robust_acc``, ``val_*``) or spans evaluations
    (``auc_acc``) and stays as it is. ``keys``: the metric keys the runs have."""
    if primary and f"{primary}{SEPARATOR}{key}" in keys:
        return f"{key} ({primary})"
    return key


def headline(names: Collection[str], heads: Sequence[str]) -> list[str]:
    """The names among ``names`` that :data:`HEADLINE`-style ``heads`` select, in their
    order: an exact name, or every name under a ``<family>/`` head (sorted)."""
    have = set(names)
    out: list[str] = []
    for head in heads:
        out += sorted(n for n in have if n == head or (head.endswith(SEPARATOR) and n.startswith(head)))
    return out


def bound_key(key: str, end: str) -> str | None:
    """The key of one end (``lo``, ``hi``) of the speaker-bootstrap interval of the metric
    ``key`` (``fpr_parity/gender`` -> ``fpr_parity_lo/gender``, ``val_group_auc_fpr/age/old`` ->
    ``val_group_auc_fpr_lo/age/old``); None when ``key``'s family has no such interval (or
    ``key`` is no metric key)."""
    try:
        parsed = MetricKey.parse(key)
    except ValueError:
        return None
    if parsed.statistic is not None or parsed.split == TRAIN or parsed.family not in BOOTSTRAPPED_FAMILIES:
        return None
    rest = parsed.name[len(parsed.family):]
    return replace(parsed, name=bound_family(parsed.family, end) + rest).mlflow_key()


def direction(family: str) -> str | None:
    """``max`` or ``min``: which way is better for ``family``; None when undeclared."""
    return DIRECTION.get(family)
