"""Validation of a parsed configuration document: :func:`validate` (two passes) and
:func:`check_structure` (the first pass alone, importing no registry entry), every problem
collected into one :class:`ConfigError`; the second pass builds the cheap objects
(:mod:`distfair.config.buildable`)."""
from __future__ import annotations

import inspect
from typing import Any

from distfair.config.flat_keys import flatten
from distfair.config.limits import shown
from distfair.config.names import mlflow_key_problem, name_problem
from distfair.config.schema import ConfigError, _fixed_block, _Problems, _registry_block
from distfair.config.seeds import MAX_SEED_COUNT, check_seeds
from distfair.attacks import ATTACKS
from distfair.data import DATASETS
from distfair.defenses import DEFENSE_RUNTIME_ARGS, DEFENSES
from distfair.evaluation.summaries import check_summaries
from distfair.evaluation.subgroup_spec import METADATA, is_options_form, metadata_options, subgroup_problems
from distfair.models import MODEL_DATA_ARGS, MODELS
from distfair.config.buildable import _check_buildable
from distfair.config.fields import (CONFIGURATION_NAME, DEFAULT_EVAL_ATTACK, EVAL_FIELDS, SCALING_FIELDS,
                                    TOP_LEVEL, TRAIN_FIELDS)

def validate(raw: Any, source: str) -> dict:
    """Validate a parsed YAML document; return the fully resolved config or raise ConfigError.

    Two passes. :func:`check_structure` first: the blocks, the fixed fields, every registry
    name, without importing PyTorch, torchvision, torchaudio or scikit-learn, so a typo is
    reported at once (all such problems together) instead of after the seconds those imports
    take. Only a document without such problems is checked against the registry entries'
    signatures (their options) and built (impossible values, a missing data root)."""
    check_structure(raw, source)
    return _validate(raw, source, deep=True)


def check_structure(raw: Any, source: str) -> None:
    """The first pass of :func:`validate`: raise ConfigError with every problem that shows
    without importing a registry entry (unknown or missing keys, wrong types of the fixed
    blocks, unknown registry names, seeds, ``configurations``, ``eval`` shapes)."""
    _validate(raw, source, deep=False)


def _validate(raw: Any, source: str, deep: bool) -> dict:
    """The resolved config; ``deep=False`` skips everything that imports a registry entry."""
    problems = _Problems()
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top level)", f"must be a mapping, got {type(raw).__name__}")])
    for key in raw:
        if key not in TOP_LEVEL:
            problems.add(str(key), f"unknown top-level key; known: {', '.join(TOP_LEVEL)}")
    for key in ("defense", "dataset", "model"):
        if key not in raw:
            problems.add(key, "required")
    cfg: dict[str, Any] = {"description": raw.get("description", "")}

    cfg["dataset"] = _registry_block(raw.get("dataset"), DATASETS, "dataset", problems, options=deep) \
        if "dataset" in raw else None
    cfg["model"] = _registry_block(raw.get("model"), MODELS, "model", problems, skip=MODEL_DATA_ARGS,
                                   options=deep) if "model" in raw else None
    cfg["defense"] = _registry_block(raw.get("defense"), DEFENSES, "defense", problems,
                                     skip=DEFENSE_RUNTIME_ARGS, options=deep) if "defense" in raw else None
    raw_attack = raw.get("attack")
    cfg["attack"] = None if raw_attack is None else _registry_block(raw_attack, ATTACKS, "attack", problems,
                                                                    skip=("bounds",), options=deep)
    cfg["train"] = _fixed_block(raw.get("train"), TRAIN_FIELDS, "train", problems)
    cfg["scaling"] = _fixed_block(raw.get("scaling"), SCALING_FIELDS, "scaling", problems)
    _resources_per_seed(raw.get("scaling"), cfg["scaling"], problems)
    cfg["seeds"] = None                    # resolved below, once the eval entries' names are known
    space = raw.get("space", {})
    if not isinstance(space, dict):
        problems.add("space", f"must be a mapping, got {type(space).__name__}")
    cfg["space"] = space or {}
    if "configurations" in raw:            # resolved per entry by load_configurations, not kept here
        for key, reason in configuration_problems(raw["configurations"]):
            problems.add(key, reason)
    cfg["eval"] = _eval_block(raw.get("eval"), cfg["attack"], problems, deep)
    cfg["seeds"] = check_seeds(raw.get("seeds"), problems, [a["name"] for a in cfg["eval"]["attacks"]])
    if cfg["scaling"].get("use_gpu") is False and cfg["scaling"].get("resources_per_worker", {}).get("GPU"):
        problems.add("scaling.resources_per_worker.GPU", "set scaling.use_gpu: true to request GPUs")

    # Every resolved key is logged as an MLflow parameter: one MLflow would refuse (a resource or
    # class name with a newline) fails here, not after training (unknown options refused above).
    if deep and not problems.items:
        for key in flatten(cfg):
            reason = mlflow_key_problem(key)
            if reason:
                problems.add(key, f"cannot be an MLflow parameter name: {reason}")
    # Build the cheap objects once to catch impossible values (each constructor's ValueError
    # names the option). The dataset is built too: a missing data root fails here, before
    # any Ray or MLflow work starts.
    if deep and not problems.items:
        _check_buildable(cfg, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return cfg


def _resources_per_seed(raw, scaling: dict, problems: _Problems) -> None:
    """Resolve ``scaling.resources_per_seed`` into ``resources_per_worker`` (and record both)."""
    per_seed = scaling.get("resources_per_seed")
    if per_seed is None:
        return
    if isinstance(raw, dict) and "resources_per_worker" in raw:
        problems.add("scaling.resources_per_seed", "give either resources_per_seed or resources_per_worker, not both")
        return
    workers = scaling.get("num_workers") or 1
    scaling["resources_per_worker"] = {k: float(v) / workers for k, v in per_seed.items()}


def _eval_block(raw, train_attack: dict | None, problems: _Problems, deep: bool) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add("eval", f"must be a mapping, got {type(raw).__name__}")
        return {"attacks": [], "subgroups": {}, "summaries": {}}
    for key in raw:
        if key not in EVAL_FIELDS:
            problems.add(f"eval.{key}", f"unknown key; known: {', '.join(EVAL_FIELDS)}")
    subgroups = _subgroups_block(raw.get("subgroups"), problems)
    entries = raw.get("attacks", [dict(DEFAULT_EVAL_ATTACK)])
    if not isinstance(entries, list):
        problems.add("eval.attacks", f"must be a list, got {type(entries).__name__}")
        return {"attacks": [], "subgroups": subgroups, "summaries": {}}
    attacks, seen = [], set()
    for i, entry in enumerate(entries):
        prefix = f"eval.attacks[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry.get("name"):
            problems.add(f"{prefix}.name", "every evaluation attack needs a name (a non-empty string)")
            continue
        if entry["name"] in seen:
            problems.add(f"{prefix}.name", f"duplicate evaluation attack name {shown(entry['name'])}")
        if "/" in entry["name"] or ":" in entry["name"] or entry["name"].startswith("clean"):
            problems.add(f"{prefix}.name", f"must not contain '/' or ':' or start with 'clean', got "
                                           f"{shown(entry['name'])}")
        elif name_problem(entry["name"]):
            problems.add(f"{prefix}.name", name_problem(entry["name"]))
        seen.add(entry["name"])
        entry = dict(entry)
        if not _entry_target(entry, prefix, problems):
            continue
        if deep and "eps" not in entry and _eps_required(entry.get("attack")):
            if train_attack is None or "eps" not in train_attack:
                if not any(key == "attack.eps" for key, _ in problems.items):   # not a second line for one problem
                    problems.add(f"{prefix}.eps", "required when there is no training attack to inherit it from")
                continue
            entry["eps"] = train_attack["eps"]
        block = _registry_block(entry, ATTACKS, prefix, problems, skip=("bounds",), name_key="attack",
                                extra=("name", "target"), options=deep)
        if block is not None:
            attacks.append(block)
    summaries = raw.get("summaries") or {}
    for key, message in check_summaries(summaries, attacks, with_options=deep):
        problems.add(key, message)
    if not isinstance(summaries, dict):
        summaries = {}
    return {"attacks": attacks, "subgroups": subgroups,
            "summaries": {name: dict(options) if isinstance(options, dict) else {}
                          for name, options in summaries.items()}}


def _eps_required(attack_name) -> bool:
    """Inherit the training ε only for attacks whose ε has no default (physical attacks'
    ``eps: None`` means "no budget beyond the valid range" and must stay that way)."""
    cls = ATTACKS.get(attack_name)
    return cls is not None and inspect.signature(cls).parameters["eps"].default is inspect.Parameter.empty


def _entry_target(entry: dict, prefix: str, problems: _Problems) -> bool:
    """``target``: null, a class index, a class name, "random" or "every"."""
    target = entry.get("target")
    if target is None:
        return True
    if isinstance(target, bool) or not isinstance(target, (int, str)) or (isinstance(target, int) and target < 0):
        problems.add(f"{prefix}.target", f"must be a class index (>= 0), a class name, 'random' or 'every', "
                                         f"got {shown(target)}")
        return False
    if target == "random" and entry.get("target_mode", "none") != "none":
        problems.add(f"{prefix}.target", "give either target: random or target_mode, not both")
        return False
    return True   # a class name is checked against the dataset in _check_buildable


def _subgroups_block(raw, problems: _Problems) -> dict:
    """``{attribute: "metadata" | {source: metadata, ...} | {intersect: [...], ...} | {class name or
    index: group}}`` (``distfair.evaluation.subgroup_spec``). The bare word stays as written; the
    options form is resolved with every default filled in, so the record says what was left out."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add("eval.subgroups", f"must be a mapping attribute -> 'metadata' or a class -> group map, "
                                       f"got {type(raw).__name__}")
        return {}
    out = {}
    for attr, source in raw.items():
        key = f"eval.subgroups.{attr}"
        if not isinstance(attr, str) or not attr or "/" in attr:
            problems.add(key, "an attribute name must be a non-empty string without '/'")
        elif name_problem(attr):
            problems.add(key, f"an attribute name {name_problem(attr)}")
        elif source == METADATA:
            out[attr] = source
        elif is_options_form(source):
            found = subgroup_problems(attr, source)
            for where, reason in found:
                problems.add(where, reason)
            if not found:
                out[attr] = metadata_options(source)
        elif isinstance(source, dict) and source:
            bad = [k for k, v in source.items() if isinstance(k, bool) or not isinstance(k, (int, str))
                   or isinstance(v, (dict, list)) or v is None]
            if bad:
                problems.add(f"{key}.{bad[0]}", "class keys must be names or indices and groups plain values")
            else:
                out[attr] = {k: str(v) for k, v in source.items()}
        else:
            problems.add(key, f"must be 'metadata' or a non-empty class -> group mapping (or the options form "
                              f"{{source: metadata, exclude: [...], min_group_size: <n>, size_by: ...}}), "
                              f"got {shown(source)}")
    return out


def configuration_problems(raw: Any) -> list[tuple[str, str]]:
    """Structural problems of a ``configurations`` block: a non-empty mapping of names
    (:data:`CONFIGURATION_NAME`) to non-empty mappings of dotted keys (top-level blocks other
    than ``seeds``, ``space`` and ``configurations``)."""
    if not isinstance(raw, dict) or not raw:
        return [("configurations", f"must be a non-empty mapping of name -> {{dotted key: value}}, got {shown(raw)}")]
    problems = []
    for name, items in raw.items():
        where = f"configurations.{name}"
        if not isinstance(name, str) or not CONFIGURATION_NAME.match(name):
            problems.append((where, "a name must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                                    "letter or digit"))
        if not isinstance(items, dict) or not items:
            problems.append((where, f"must be a non-empty mapping of dotted key -> value, got {shown(items)}"))
            continue
        for key in items:
            top = str(key).split(".")[0]
            if top not in TOP_LEVEL or top in ("seeds", "space", "configurations"):
                known = ", ".join(k for k in TOP_LEVEL if k not in ("seeds", "space", "configurations"))
                problems.append((f"{where}.{key}", f"must address a config value under {known} (every "
                                                   "configuration runs the file's seeds)"))
    return problems

