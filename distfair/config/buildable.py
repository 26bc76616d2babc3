"""The second pass of validation: build the cheap objects of a structurally valid
configuration (attacks, dataset, evaluation attacks, masks, groupings, defense, and the model
on PyTorch's meta device) so that impossible values, a missing data root and a model too large
to train are reported before any Ray or MLflow work;
and :func:`dataset_spec`, from the same cached dataset."""
from __future__ import annotations

import functools
import json

from distfair.registry import options as _options
from distfair.config.schema import _Problems, _try_build
from distfair.defenses import DEFENSES


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
    _try_build(problems, "model", lambda: _meta_model(cfg["model"], data.num_classes, data.in_shape))


def _meta_model(block: dict, num_classes: int, in_shape: tuple):
    """The configured model, built on PyTorch's meta device (shapes, no memory: a width of 1e10
    costs nothing here) and refused past ``MAX_PARAMETERS``; ValueError naming the problem."""
    import torch

    from distfair.models import MAX_PARAMETERS, build_model

    try:
        with torch.device("meta"):
            model = build_model(block["name"], num_classes=num_classes, in_shape=in_shape, **_options(block, "name"))
    except (RuntimeError, OverflowError) as err:    # "Storage size calculation overflowed with sizes=[...]"
        raise ValueError(f"too large to build: {_first_line(err)}") from None
    except TypeError as err:                        # PyTorch's add a C++ stack to the line that says why
        raise TypeError(_first_line(err)) from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{count} parameters, more than the {MAX_PARAMETERS} a model may have; make it smaller")
    return model


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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

