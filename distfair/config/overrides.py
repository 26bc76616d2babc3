"""``--set key.path=value`` overrides: parsed (the value as YAML) and applied to a raw
configuration document."""
from __future__ import annotations

import copy
from typing import Any

from distfair.config.limits import shown
from distfair.config.schema import ConfigError
from distfair.config.yaml_input import parse_yaml_text


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``train.lr=0.01``, ``seeds=[0,1]``), by
    the loader of configuration files and with its limits (no alias bomb, no huge integer)."""
    if "=" not in text:
        raise ValueError(f"--set {shown(text)}: expected key.path=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {shown(text)}: empty key")
    if not value.strip():
        return key, None
    parsed, problem = parse_yaml_text(value)
    if problem is not None:
        where, reason = problem
        raise ValueError(f"--set {shown(text)}: {reason if where == '(file)' else f'{where}: {reason}'}")
    return key, parsed


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

