"""The configuration format shared by ``distfair run`` and ``distfair sweep``.

A YAML file with these top-level blocks (see tune_spaces/quickstart.yaml for a commented one):

``defense``, ``dataset``, ``model``, ``attack``
    ``{name: <registry name>, <option>: <value>, ...}`` (a bare string means ``{name: ...}``).
    The options of each registry entry are the keyword-only arguments of its constructor;
    their annotations give the accepted types. ``attack`` is the training attack (null for
    defenses that need none).
``train``
    epochs, batch size, optimiser, learning rate and schedule (``TRAIN_FIELDS``).
``eval``
    ``attacks``: a list of ``{name: <label>, attack: <registry name>, target: ..., <option>: ...}``.
    The first is the primary attack. A missing ``eps`` is inherited from the training attack
    when the attack requires one (physical attacks default to no budget beyond the valid
    range); PGD's step defaults to eps/4. ``target``: null (untargeted), a class index or
    name, ``random`` (a random wrong class per sample) or ``every`` (each wrong class in turn,
    worst case per sample, targeted success matrix). Default: one PGD-20 at the training ε.
    ``subgroups``: ``{<attribute>: metadata | {<class name or index>: <group>, ...}}``, see
    ``distfair.evaluation.subgroups``. ``summaries``: ``{<summary>: {<option>: ...}}``, the
    evaluation summaries to run beyond the default ones, with their options (e.g.
    ``auc_acc: {entries: [<eval.attacks names>]}``); see ``distfair.evaluation.summaries``.
``scaling``
    Ray Train resources of one seed run (``SCALING_FIELDS``).
``seeds``
    a list of integers, or an integer n meaning 0..n-1.
``space``
    the search space used by ``distfair sweep``; ``distfair run`` ignores it.
``configurations``
    several configurations in one file for ``distfair run`` (a comparison, e.g. randomized
    smoothing at several N against neural rejection): ``{<name>: {<dotted key>: <value>, ...}}``,
    each entry's values replacing those of the file (a mapping value replaces the whole block:
    ``defense: {name: neural_rejection}``), ``--set`` applied last. ``distfair run`` runs each
    as its own configuration (a parent run named after it) over the same seeds; see
    :func:`load_configurations`. ``distfair sweep`` refuses it (a sweep searches ``space``).

Loading resolves every default, so the resolved dict records everything a run used. Every
problem is reported as ``<file>: <dotted key>: <reason>``; :class:`ConfigError` carries all of
them at once.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from distfair.registry import options as _options
from distfair.config.schema import (ConfigError, _fixed_block, _Problems, _registry_block, _try_build,
                              read_yaml_documents)
from distfair.attacks import ATTACKS
from distfair.data import DATASETS
from distfair.defenses import DEFENSE_RUNTIME_ARGS, DEFENSES
from distfair.evaluation.summaries import check_summaries
from distfair.models import MODEL_DATA_ARGS, MODELS

TOP_LEVEL = ("description", "defense", "dataset", "model", "attack", "train", "eval", "scaling",
             "seeds", "space", "configurations")
#: what a configuration name may contain (it becomes part of MLflow run names and tags)
CONFIGURATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# field: (type, default, check or None). A check returns an error text or None.
_positive = lambda v: None if v > 0 else f"must be > 0, got {v}"           # noqa: E731
_non_negative = lambda v: None if v >= 0 else f"must be >= 0, got {v}"     # noqa: E731
_at_least_one = lambda v: None if v >= 1 else f"must be >= 1, got {v}"     # noqa: E731


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _resource_map(v) -> str | None:
    ok = all(isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
             and x != float("inf") for k, x in v.items())
    return None if ok else f"must map resource names to finite non-negative numbers, got {v!r}"


TRAIN_FIELDS: dict[str, tuple[Any, Any, Callable | None]] = {
    "epochs": (int, 10, _at_least_one),
    "batch_size": (int, 64, _at_least_one),
    "eval_batch_size": (int, 256, _at_least_one),
    "optimizer": (str, "sgd", _one_of("sgd", "adam", "adamw")),
    "lr": (float, 0.05, _positive),
    "momentum": (float, 0.9, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}"),
    "weight_decay": (float, 5e-4, _non_negative),
    "nesterov": (bool, False, None),
    "schedule": (str, "none", _one_of("none", "step", "multistep", "cosine")),
    "step_size": (int, 7, _at_least_one),
    "gamma": (float, 0.1, _positive),
    "milestones": (list, [], lambda v: None if all(isinstance(m, int) and m >= 1 for m in v)
                   else f"must be a list of positive integers, got {v!r}"),
    # start from an earlier run's final weights: a checkpoint file, an MLflow seed run id, or an
    # MLflow configuration run id (then each seed starts from that configuration's same seed)
    "init_from": (str, None, lambda v: None if v.strip() else "must be a path or an MLflow run id"),
    # the fast training path (distfair/engine/accel.py); every default keeps the plain fp32 path
    "precision": (str, "fp32", _one_of("fp32", "bf16")),   # autocast over the training step only
    "channels_last": (bool, False, None),                  # NHWC weights for 2-D convolutional models
    "compile": (bool, False, None),                        # train through torch.compile(model)
    "fused_optimizer": (bool, False, None),                # fused (else foreach) optimiser kernels
    "data_on_device": (bool, False, None),                 # a tensor training set held on the device
}

SCALING_FIELDS: dict[str, tuple[Any, Any, Callable | None]] = {
    "num_workers": (int, 1, _at_least_one),
    "use_gpu": (bool, False, None),
    "resources_per_worker": (dict, {"CPU": 1.0}, _resource_map),
    # alternative to resources_per_worker: one seed run's total, split evenly over its workers
    # (e.g. {CPU: 2, GPU: 0.25} with one worker packs four seed runs on one GPU)
    "resources_per_seed": (dict, None, _resource_map),
    "placement_strategy": (str, "PACK", _one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")),
    "max_concurrent_seeds": (int, None, _at_least_one),
    "max_failures": (int, 0, _non_negative),
}

EVAL_FIELDS = ("attacks", "subgroups", "summaries")
DEFAULT_EVAL_ATTACK = {"name": "pgd20", "attack": "pgd", "steps": 20}


# ------------------------------------------------------------------------------- top level
#: the largest ``seeds: <count>``: far beyond any study, small enough to list
MAX_SEED_COUNT = 1_000_000


def _seeds(raw, problems: _Problems) -> list[int]:
    if raw is None:
        return [0, 1, 2]
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            problems.add("seeds", f"an integer count must be >= 1, got {raw}")
            return []
        if raw > MAX_SEED_COUNT:             # listing 10**30 seeds would exhaust memory here
            problems.add("seeds", f"an integer count must be <= {MAX_SEED_COUNT}, got {raw}")
            return []
        return list(range(raw))
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        problems.add("seeds", f"must be a non-empty list of integers or a count, got {raw!r}")
        return []
    if len(set(raw)) != len(raw):
        problems.add("seeds", f"must not repeat a seed, got {raw}")
    if any(s < 0 for s in raw):
        problems.add("seeds", f"must be non-negative, got {raw}")
    if any(s >= 2**64 for s in raw):     # torch.manual_seed's range: a larger seed fails in the worker
        problems.add("seeds", f"must be < 2**64, got {[s for s in raw if s >= 2**64]}")
    return list(raw)


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
    cfg["seeds"] = _seeds(raw.get("seeds"), problems)
    space = raw.get("space", {})
    if not isinstance(space, dict):
        problems.add("space", f"must be a mapping, got {type(space).__name__}")
    cfg["space"] = space or {}
    if "configurations" in raw:            # resolved per entry by load_configurations, not kept here
        for key, reason in configuration_problems(raw["configurations"]):
            problems.add(key, reason)
    cfg["eval"] = _eval_block(raw.get("eval"), cfg["attack"], problems, deep)
    if cfg["scaling"].get("use_gpu") is False and cfg["scaling"].get("resources_per_worker", {}).get("GPU"):
        problems.add("scaling.resources_per_worker.GPU", "set scaling.use_gpu: true to request GPUs")

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
            problems.add(f"{prefix}.name", f"duplicate evaluation attack name {entry['name']!r}")
        if "/" in entry["name"] or ":" in entry["name"] or entry["name"].startswith("clean"):
            problems.add(f"{prefix}.name", f"must not contain '/' or ':' or start with 'clean', got {entry['name']!r}")
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
                                         f"got {target!r}")
        return False
    if target == "random" and entry.get("target_mode", "none") != "none":
        problems.add(f"{prefix}.target", "give either target: random or target_mode, not both")
        return False
    return True   # a class name is checked against the dataset in _check_buildable


def _subgroups_block(raw, problems: _Problems) -> dict:
    """``{attribute: "metadata" | {class name or index: group}}``."""
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
        elif source == "metadata":
            out[attr] = source
        elif isinstance(source, dict) and source:
            bad = [k for k, v in source.items() if isinstance(k, bool) or not isinstance(k, (int, str))
                   or isinstance(v, (dict, list)) or v is None]
            if bad:
                problems.add(f"{key}.{bad[0]}", "class keys must be names or indices and groups plain values")
            else:
                out[attr] = {k: str(v) for k, v in source.items()}
        else:
            problems.add(key, f"must be 'metadata' or a non-empty class -> group mapping, got {source!r}")
    return out


@functools.lru_cache(maxsize=4)
def _cached_dataset(block_json: str):
    """Datasets built for validation, cached: a sweep validates every dimension's extremes."""
    from distfair.data import build_dataset

    block = json.loads(block_json)
    return build_dataset(block.pop("name"), **block)


def dataset_spec(cfg: dict) -> tuple[int, tuple[int, ...]]:
    """(number of classes, input shape) of a validated configuration's dataset (built once
    and cached, as for validation)."""
    data = _cached_dataset(json.dumps(cfg["dataset"], sort_keys=True, default=str))
    return data.num_classes, tuple(data.in_shape)


def _check_buildable(cfg: dict, problems: _Problems) -> None:
    from distfair.attacks import build_attack
    from distfair.defenses import build_defense
    from distfair.models import build_model

    attack = None
    if cfg["attack"] is not None:
        attack = _try_build(problems, "attack", lambda: build_attack(
            cfg["attack"]["name"], bounds=(0.0, 1.0), **_options(cfg["attack"], "name")))
    for i, entry in enumerate(cfg["eval"]["attacks"]):
        _try_build(problems, f"eval.attacks[{i}]", lambda e=entry: build_attack(
            e["attack"], bounds=(0.0, 1.0), **_options(e, "name", "attack", "target")))
    if cfg["attack"] is not None and attack is None:
        return
    # a defense running its own inner maximisation declares the threat models it honours
    # (Defense.attack_norms): any other training attack is the attack's problem, not the defense's
    threat_problem = DEFENSES[cfg["defense"]["name"]].attack_problem(attack)
    if threat_problem:
        problems.add("attack.name", threat_problem)
    data = _try_build(problems, "dataset", lambda: _cached_dataset(
        json.dumps(cfg["dataset"], sort_keys=True, default=str)))
    if data is None:
        return
    from distfair.evaluation import build_eval_attack, resolve_groupings

    for i, entry in enumerate(cfg["eval"]["attacks"]):
        if entry.get("target") is not None:
            _try_build(problems, f"eval.attacks[{i}].target", lambda e=entry: build_eval_attack(e, data))
    _check_masks(cfg, data.in_shape, problems)
    try:
        resolve_groupings(cfg["eval"]["subgroups"], data)
    except ValueError as err:               # "eval.subgroups.<attr>: <reason>"
        key, _, reason = str(err).partition(": ")
        problems.add(key, reason)
    if not threat_problem:
        _try_build(problems, "defense", lambda: build_defense(
            cfg["defense"]["name"], attack=attack, num_classes=data.num_classes, **_options(cfg["defense"], "name")))
    _try_build(problems, "model", lambda: build_model(
        cfg["model"]["name"], num_classes=data.num_classes, in_shape=data.in_shape, **_options(cfg["model"], "name")))


def _check_masks(cfg: dict, in_shape: tuple, problems: _Problems) -> None:
    """Read every attack's ``mask`` file now, at the data's (H, W), as the attack will: an
    unreadable or all-zero mask is a configuration problem, not a failure after Ray started."""
    from distfair.attacks._masks import load_mask

    shape = tuple(in_shape)     # (C, H, W) images; (C, L) and (D,) are seen as one row, as the attacks do
    height, width = shape[-2:] if len(shape) == 3 else (1, shape[-1])
    blocks = [("attack", cfg["attack"])] + [(f"eval.attacks[{i}]", e) for i, e in enumerate(cfg["eval"]["attacks"])]
    for key, block in blocks:
        if any(k == key for k, _ in problems.items):    # the constructor already refused it (a missing file)
            continue
        if block and isinstance(block.get("mask"), str):
            _try_build(problems, key, lambda m=block["mask"]: load_mask(m, height, width))


# --------------------------------------------------------------------------- load / output
def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``train.lr=0.01``, ``seeds=[0,1]``)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {text!r}: empty key")
    return key, yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]]) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in overrides:
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str):   # `attack: pgd` shorthand -> mapping
                node[part] = {"name": node[part]}
            elif node.get(part) is None:           # `attack: null` (or absent) -> new mapping
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError("--set", [(key, f"{part!r} is not a mapping")])
        node[parts[-1]] = value
    return raw


def read_document(path: str | Path) -> dict:
    """The YAML document of a config file, unvalidated (a mapping). Raises ConfigError."""
    source = str(path)
    raw, problem = read_yaml_documents(path)     # one line: `line N: ...`, binary, duplicate keys
    if problem is not None:
        raise ConfigError(source, [problem])
    if raw is None:
        raise ConfigError(source, [("(file)", "empty file")])
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top level)", f"must be a mapping, got {type(raw).__name__}")])
    return raw


def configuration_problems(raw: Any) -> list[tuple[str, str]]:
    """Structural problems of a ``configurations`` block: a non-empty mapping of names
    (:data:`CONFIGURATION_NAME`) to non-empty mappings of dotted keys (top-level blocks other
    than ``seeds``, ``space`` and ``configurations``)."""
    if not isinstance(raw, dict) or not raw:
        return [("configurations", f"must be a non-empty mapping of name -> {{dotted key: value}}, got {raw!r}")]
    problems = []
    for name, items in raw.items():
        where = f"configurations.{name}"
        if not isinstance(name, str) or not CONFIGURATION_NAME.match(name):
            problems.append((where, "a name must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                                    "letter or digit"))
        if not isinstance(items, dict) or not items:
            problems.append((where, f"must be a non-empty mapping of dotted key -> value, got {items!r}"))
            continue
        for key in items:
            top = str(key).split(".")[0]
            if top not in TOP_LEVEL or top in ("seeds", "space", "configurations"):
                known = ", ".join(k for k in TOP_LEVEL if k not in ("seeds", "space", "configurations"))
                problems.append((f"{where}.{key}", f"must address a config value under {known} (every "
                                                   "configuration runs the file's seeds)"))
    return problems


def load_configurations(path: str | Path, overrides: list[str] | None = None) -> list[tuple[str | None, dict]]:
    """The configurations of a file for ``distfair run``: ``[(None, cfg)]`` for a file without
    a ``configurations`` block (as :func:`load_config`), else ``[(name, cfg), ...]`` in file
    order, each the file with that entry's values applied, then ``--set`` ``overrides``, then
    validated. Raises ConfigError with every problem of every configuration, each key
    prefixed ``configurations.<name>:``."""
    raw = read_document(path)
    parsed, source = _parsed_overrides(str(path), overrides)
    if "configurations" not in raw:
        return [(None, validate(apply_overrides(raw, parsed) if parsed else raw, source))]
    structural = configuration_problems(raw["configurations"])
    if structural:
        raise ConfigError(source, structural)
    base = {k: v for k, v in raw.items() if k != "configurations"}
    variants, problems = [], []
    for name, items in raw["configurations"].items():
        try:
            variants.append((name, apply_overrides(apply_overrides(base, list(items.items())), parsed)))
        except ConfigError as err:
            problems += [(f"configurations.{name}: {key}", reason) for key, reason in err.problems]
    # every configuration's structure first (no PyTorch import), then each one in full
    for check in (check_structure, validate):
        out = []
        for name, variant in variants:
            try:
                out.append((name, check(variant, source)))
            except ConfigError as err:
                problems += [(f"configurations.{name}: {key}", reason) for key, reason in err.problems]
        if problems:
            raise ConfigError(source, problems)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a config file. Raises ConfigError (all problems at once)."""
    raw = read_document(path)
    parsed, source = _parsed_overrides(str(path), overrides)
    return validate(apply_overrides(raw, parsed) if parsed else raw, source)


def _parsed_overrides(source: str, overrides: list[str] | None) -> tuple[list[tuple[str, Any]], str]:
    """``--set`` strings as (dotted key, value) pairs, and the source label naming them.
    Raises ConfigError (key ``--set``) for one that does not parse."""
    if not overrides:
        return [], source
    try:
        parsed = [parse_override(o) for o in overrides]
    except ValueError as err:
        raise ConfigError(source, [("--set", str(err))]) from err
    return parsed, f"{source} (with --set {' '.join(overrides)})"


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"train.lr": 0.05, "eval.attacks.0.steps": 20, ...}`` (``space`` left out)."""
    out: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg)
    for key, value in items:
        if not prefix and key == "space":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):          # an empty mapping (no subgroups) adds nothing
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
