"""Accuracy over an attack-budget grid and Defense Parity (speech paper, §3, Eq. 1), a summary
across evaluations and groups.

Named in ``eval.summaries`` with the ``eval.attacks`` entries that form the grid::

    eval:
      attacks:
        - {name: pgd_1e-4, attack: pgd, eps: 0.0001, steps: 100, alpha: 0.00002}
        - {name: pgd_1e-3, attack: pgd, eps: 0.001, steps: 100, alpha: 0.0002}
        ...
      summaries:
        auc_acc: {entries: [pgd_1e-4, pgd_1e-3, ...]}

Each entry's budget is its ``eps`` option. ``AUC_acc(s) = ∫_{ε_min}^{ε_max} acc_s(ε) dε``
(Eq. 1) by the trapezoid rule over the entries' budgets on a **linear** ε axis, as the
paper's integral, not normalised by the range (the paper's Table 1/2 values, at most
ε_max − ε_min, are of this kind). ``acc_s(ε)`` is Eq. 1's fraction of subgroup s's samples
classified correctly under the entry's attack: sample-weighted for every attribute (also
class-level ones, unlike the class-balanced ``group_acc``), an abstention is not correct, and
a fixed-target entry's own target class (not attacked) is left out.

Metrics (bare on the test split, ``val_``-prefixed from the validation pass, which then also
evaluates every grid entry): ``auc_acc`` over all samples, ``group_auc_acc/<attr>/<group>``
per ``eval.subgroups`` group (its samples at each budget, ``n``, beside it in the document), and
``defense_parity/<attr>``: the largest ``AUC_acc`` difference between the groups of one
attribute (§3: "the largest difference between subgroups"); groups left out by ``exclude`` or
``min_group_size`` (``distfair.evaluation.subgroups``) take no part and are listed under
``left_out``.
Accuracy Parity, the same on clean accuracy, is ``clean_group_gap/<attr>`` for per-sample
attributes. A group without samples at some budget has no ``AUC_acc`` (a ``UserWarning``)
and is left out of the parity. Document ``auc_acc.json``; figure: accuracy against ε per
attribute.

**Speaker-level intervals.** The paper's groups are groups of speakers (§4.1, §5), whose clips
are not independent: option ``bootstrap`` (``{resamples: 1000, cluster_by: speaker, level:
0.95, seed: 0}``; ``resamples: 0`` turns it off) gives each group's AUC_acc and each defense
parity a percentile interval from a bootstrap over speakers, stratified by group
(``distfair.evaluation.summaries._cluster_bootstrap``): metrics
``group_auc_acc_lo/<attr>/<group>``, ``group_auc_acc_hi/<attr>/<group>``,
``defense_parity_lo/<attr>``, ``defense_parity_hi/<attr>``; in the document each group's
``interval``, the attribute's ``defense_parity_interval`` (undefined, with the reason, for a
one-speaker group) and the options under ``bootstrap``. A resample recomputes each budget's
accuracy from per-speaker counts of correct and evaluated clips (a fixed-target entry leaves
some clips out, so the counts differ between budgets). The figures show each interval beside
its area, in the legend and the title.

**A log-ε axis** (option ``log_eps: true``; the linear one stays, as the paper's): on the linear
axis the paper's grid {1e-4, 1e-3, 1e-2, 0.1, 0.2, 0.3} gives the interval 0.1-0.3, where
models sit at chance, two thirds of the area, and 1e-4-1e-2 almost none. Beside it,

    AUC_acc^log(s) = ∫ acc_s d(log10 ε) / (log10 ε_max − log10 ε_min)

by the trapezoid rule over log10 of the same budgets (every ``eps`` must be > 0): each decade
weighs the same, and the normalisation by the log range puts it in [0, 1] (the mean accuracy
over the log axis; a model at accuracy a everywhere scores a). Metrics ``auc_acc_logeps``,
``group_auc_acc_logeps/<attr>/<group>`` and ``defense_parity_logeps/<attr>`` (the largest
difference between groups, as the paper's Defense Parity), the curve in the document's ``log_eps``.

**Loudness** (``distfair.evaluation.loudness``): ε is an absolute amplitude (the paper's; with
``eps_relative_to: rms`` on the entries' attacks, a multiple of each clip's RMS), and groups
differ in loudness. For every grid entry whose attack was measured (untargeted), each clip's
SNR = 10·log10(mean(x²) / mean((x_adv − x)²)) in dB is averaged over the group:
``<entry>/snr_db`` (all samples) and ``<entry>/group_snr_db/<attr>/<group>`` per evaluation, and
per group in the document (``snr_db``, with ``snr_n`` the clips with a finite SNR, aligned with
``eps``). The SNR at the Gaussian noise σ a predictor adds to its input (randomized smoothing)
is the AUC_FPR summary's (``summaries/auc_fpr.py``: ``group_noise_snr_db``), which runs for
every such predictor.
"""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path

import numpy as np

from distfair.evaluation.loudness import mean_snr, snr_db
from distfair.evaluation.subgroups import metric_safe
from distfair.evaluation.summaries import _cluster_bootstrap as cb
from distfair.evaluation.summaries._base import Summary, SummaryContext, SummaryOutput


def trapezoid_auc(eps: list[float], acc: list[float]) -> float:
    """``∫ acc dε`` by the trapezoid rule over ascending ``eps`` (linear axis)."""
    return float(np.trapezoid(np.asarray(acc, dtype=float), np.asarray(eps, dtype=float)))


def log_eps_auc(eps: list[float], acc: list[float]) -> float:
    """``∫ acc d(log10 ε) / (log10 ε_max − log10 ε_min)`` by the trapezoid rule over ascending
    ``eps`` (all > 0, at least two distinct): in [0, 1] for accuracies in [0, 1]."""
    logs = np.log10(np.asarray(eps, dtype=float))
    return float(np.trapezoid(np.asarray(acc, dtype=float), logs) / (logs[-1] - logs[0]))


class AccuracyAUC(Summary):
    name = "auc_acc"
    artifact = "auc_acc.json"
    splits = ("val", "test")
    default = False
    families = {"auc_acc": (), "group_auc_acc": ("attribute", "group"), "defense_parity": ("attribute",),
                "auc_acc_logeps": (), "group_auc_acc_logeps": ("attribute", "group"),
                "defense_parity_logeps": ("attribute",), "snr_db": (), "group_snr_db": ("attribute", "group"),
                **cb.bound_families({"group_auc_acc": ("attribute", "group"), "defense_parity": ("attribute",)})}
    #: two entries of the contract checks' toy grid (distfair.testing), an ε grid of two points
    TEST_OPTIONS = {"entries": ["fgsm_small", "fgsm_large"]}

    @classmethod
    def check_options(cls, options: dict, entries: list[dict]) -> list[tuple[str, str]]:
        unknown = [(k, "unknown option; known: entries, log_eps, bootstrap") for k in options
                   if k not in ("entries", "log_eps", "bootstrap")]
        unknown += cb.check_options(options.get("bootstrap"))
        log_eps = options.get("log_eps", False)
        if not isinstance(log_eps, bool):
            unknown.append(("log_eps", f"must be true or false, got {log_eps!r}"))
        names = options.get("entries")
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            return unknown + [("entries", f"must list at least 2 eval.attacks entry names, got {names!r}")]
        by_name = {e.get("name"): e for e in entries}
        problems = []
        for n in names:
            if n not in by_name:
                problems.append(("entries", f"{n!r} is not an eval.attacks entry (entries: "
                                            f"{', '.join(map(str, by_name))})"))
            elif not isinstance(by_name[n].get("eps"), numbers.Real) or isinstance(by_name[n].get("eps"), bool):
                problems.append(("entries", f"entry {n!r} has no numeric eps: its budget on the ε axis"))
        if len(set(names)) != len(names):
            problems.append(("entries", f"names an entry twice: {names}"))
        elif not problems and len({float(by_name[n]["eps"]) for n in names}) != len(names):
            problems.append(("entries", "two entries have the same eps; the grid needs distinct budgets"))
        if not problems and log_eps is True and any(float(by_name[n]["eps"]) <= 0 for n in names):
            problems.append(("log_eps", "a log-ε axis needs every entry's eps > 0 (drop the ε = 0 entry: its "
                                        "accuracy is the clean one)"))
        if not problems and len({by_name[n].get("eps_relative_to", "none") for n in names}) > 1:
            problems.append(("entries", "the entries mix absolute and RMS-relative budgets (eps_relative_to): "
                                        "one ε axis needs one kind"))
        return unknown + problems

    @classmethod
    def entries_needed(cls, options: dict) -> list[str]:
        return list(options.get("entries") or [])

    def summarize(self, ctx: SummaryContext) -> SummaryOutput:
        names = list(ctx.options["entries"])
        missing = [n for n in names if n not in ctx.entries]
        if missing:
            raise ValueError(f"the grid entries {missing} have no results (failed or not evaluated); "
                             "AUC_acc needs every budget")
        grid = sorted(((float(ctx.entries[n].spec["eps"]), n) for n in names))
        eps = [e for e, _ in grid]
        entries = [ctx.entries[n] for _, n in grid]
        acc = [float(e.robust[e.members].mean()) if e.members.any() else None for e in entries]
        log_eps = bool(ctx.options.get("log_eps", False))
        snrs = {n: snr_db(e.predictions.signal_power.numpy(), e.predictions.perturbation_power.numpy())
                for (_, n), e in zip(grid, entries) if _measured(e)}
        out = SummaryOutput()
        doc = {"eps": eps, "entries": [n for _, n in grid], "axis": "linear", "acc": acc,
               "auc_acc": None if None in acc else trapezoid_auc(eps, acc), "attributes": {},
               "eps_relative_to": (entries[0].spec or {}).get("eps_relative_to", "none"),
               "snr_db": [_snr(snrs, n, e.members)[0] for (_, n), e in zip(grid, entries)]}
        out.metrics["auc_acc"] = doc["auc_acc"]
        for (_, n), e in zip(grid, entries):
            if n in snrs:
                out.entry_metrics.setdefault(n, {})["snr_db"] = _snr(snrs, n, e.members)[0]
        if log_eps:
            doc["log_eps"] = {"axis": "log10 ε, normalised by its range", "auc_acc": _log_auc(eps, acc)}
            out.metrics["auc_acc_logeps"] = doc["log_eps"]["auc_acc"]
        n = len(entries[0].members)
        boot, clusters, skipped = cb.resolve(ctx.options.get("bootstrap"), ctx.attributes, n)
        doc["bootstrap"] = cb.record(boot, skipped)
        if clusters is not None:       # (N, E): each clip correct / evaluated at each budget
            correct = np.stack([e.robust & e.members for e in entries], axis=1)
            evaluated = np.stack([e.members for e in entries], axis=1)
        for grouping in ctx.groupings:
            attr = metric_safe(grouping.attribute)
            groups, aucs, log_aucs, counts = {}, {}, {}, {}
            for g, group in enumerate(grouping.names):
                curve, sizes, snr, snr_n = [], [], [], []
                for (_, name), e in zip(grid, entries):
                    members = e.members & (e.groups(grouping) == g)
                    sizes.append(int(members.sum()))
                    curve.append(float(e.robust[members].mean()) if members.any() else None)
                    value, count = _snr(snrs, name, members)
                    snr.append(value)
                    snr_n.append(count)
                    if name in snrs:
                        out.entry_metrics.setdefault(name, {})[f"group_snr_db/{attr}/{metric_safe(group)}"] = value
                auc = None if None in curve else trapezoid_auc(eps, curve)
                groups[group] = {"n": sizes, "acc": curve, "auc_acc": auc, "snr_db": snr, "snr_n": snr_n}
                out.metrics[f"group_auc_acc/{attr}/{metric_safe(group)}"] = auc
                if auc is not None:
                    aucs[group] = auc
                    if clusters is not None:
                        # a class-level attribute groups by true class, the same in every entry
                        in_group = entries[0].groups(grouping) == g
                        counts[group] = cb.cluster_counts(clusters, in_group & evaluated.any(axis=1),
                                                          correct, evaluated)
                if log_eps:
                    groups[group]["auc_acc_logeps"] = log_aucs[group] = _log_auc(eps, curve)
                    out.metrics[f"group_auc_acc_logeps/{attr}/{metric_safe(group)}"] = log_aucs[group]

            empty = [g for g, v in groups.items() if v["auc_acc"] is None]
            if empty:
                warnings.warn(f"auc_acc: groups {empty} of attribute {grouping.attribute!r} have no samples at "
                              "some budget; they have no AUC_acc and are left out of the defense parity",
                              UserWarning, stacklevel=2)
            parity = max(aucs.values()) - min(aucs.values()) if len(aucs) >= 2 else None
            out.metrics[f"defense_parity/{attr}"] = parity
            doc["attributes"][grouping.attribute] = {"groups": groups, "defense_parity": parity,
                                                     "left_out": dict(grouping.left_out)}
            if clusters is not None:
                cb.add_intervals(out.metrics, doc["attributes"][grouping.attribute], counts, cb.trapezoid_weights(eps),
                                 boot, attr=attr, group_family="group_auc_acc", parity_family="defense_parity")
            if log_eps:
                defined = [v for v in log_aucs.values() if v is not None]
                log_parity = max(defined) - min(defined) if len(defined) >= 2 else None
                out.metrics[f"defense_parity_logeps/{attr}"] = log_parity
                doc["attributes"][grouping.attribute]["defense_parity_logeps"] = log_parity
        out.document = doc
        return out

    def figures(self, document, class_names, title, outdir: Path) -> list[Path]:
        """``auc_acc.png`` (all samples) and ``auc_acc_<attr>.png``: accuracy against ε."""
        from distfair.plotting import accuracy_curves, file_safe

        if not document:
            return []
        eps = document["eps"]
        paths = [accuracy_curves(eps, {"all samples": document["acc"]},
                                 f"{title}: accuracy over ε (AUC_acc {_fmt(document['auc_acc'])})",
                                 Path(outdir) / "auc_acc.png")]
        for attr, info in document["attributes"].items():
            curves = {f"{g} ({_n(v.get('n'))}AUC {_fmt(v['auc_acc'])}{cb.interval_text(v.get('interval'))})": v["acc"]
                      for g, v in info["groups"].items()}
            paths.append(accuracy_curves(eps, curves, f"{title}: accuracy over ε by {attr} "
                                         f"(defense parity {_fmt(info['defense_parity'])}"
                                         f"{cb.interval_text(info.get('defense_parity_interval'))})",
                                         Path(outdir) / f"auc_acc_{file_safe(attr)}.png"))
        return paths


def _measured(entry) -> bool:
    """Whether the entry's per-sample perturbation powers were measured (an untargeted attack)."""
    return entry.predictions.perturbation_power is not None and entry.predictions.signal_power is not None


def _snr(snrs: dict, name: str, members) -> tuple[float | None, int]:
    """(mean SNR in dB over ``members``, clips with a finite SNR) of grid entry ``name``; (None, 0) unmeasured."""
    return mean_snr(snrs[name], members) if name in snrs else (None, 0)


def _log_auc(eps: list[float], curve: list) -> float | None:
    return None if None in curve else log_eps_auc(eps, curve)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _n(sizes) -> str:
    """``"n=120, "`` for a legend: the group's samples (a range when they differ between budgets)."""
    if sizes is None:
        return ""
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    if not sizes:
        return ""
    low, high = min(sizes), max(sizes)
    return f"n={low}, " if low == high else f"n={low}-{high}, "
