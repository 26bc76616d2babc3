"""Checking YAML values against types and registry signatures: the machinery behind
``distfair.config``. Every problem is collected as ``(dotted key, reason)``; a
:class:`ConfigError` carries all of them as ``<file>: <key>: <reason>`` lines."""
from __future__ import annotations

import copy
import inspect
import math
import types
import typing
from typing import Any, Callable, Union

from distfair.config.limits import INT64_BOUND, MAX_SHOWN_KEY, MAX_SHOWN_REASON, one_line, shorten, shown


class ConfigError(ValueError):
    """One or more problems in a configuration, each ``(key, reason)``: kept at most
    ``MAX_SHOWN_KEY`` / ``MAX_SHOWN_REASON`` characters long (a huge value in a reason never
    reaches the terminal whole), and shown one line each (a newline or a bidirectional control
    in a key is printed as its escape)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = [(shorten(key, MAX_SHOWN_KEY), shorten(reason, MAX_SHOWN_REASON)) for key, reason in problems]
        shown_source = shorten(source, 2 * MAX_SHOWN_REASON)
        super().__init__("\n".join(one_line(f"{shown_source}: {key}: {reason}") for key, reason in self.problems))


class _Problems:
    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append((key, reason))


# ----------------------------------------------------------------------------------- types
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp):
    """Return (ok, value) after checking ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, out = _coerce(value, arm)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if origin is not None:
        tp = origin
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True, float(value)
        return False, value
    if tp in (list, tuple):
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, (list, tuple)) else value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return _type_name(origin or tp)


def _signature_fields(obj, skip: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """Keyword options of a registry entry: name -> (annotation, default or inspect._empty)."""
    fn = obj.__init__ if isinstance(obj, type) else obj
    hints = typing.get_type_hints(fn)
    fields = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name in skip or name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        fields[name] = (hints.get(name, Any), param.default)
    return fields


# ---------------------------------------------------------------------------------- blocks
def _typed_value(value, tp, default, key: str, problems: _Problems, int64: bool = True) -> tuple[bool, Any]:
    """Check one value against its annotation; null is allowed where the default is null. An
    integer must fit in 64 bits (``int64``; a field whose own check bounds it says so itself)."""
    if value is None and default is None:
        return True, None
    ok, coerced = _coerce(value, tp)
    if not ok:
        problems.add(key, f"must be {_describe(tp)}, got {shown(value)}")
    elif int64 and isinstance(coerced, int) and not isinstance(coerced, bool) \
            and not -INT64_BOUND <= coerced < INT64_BOUND:
        problems.add(key, f"must fit in 64 bits (between -2**63 and 2**63 - 1), got {shown(coerced)}")
        return False, coerced
    return ok, coerced


def _fixed_block(raw, fields, prefix: str, problems: _Problems) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(prefix, f"must be a mapping, got {type(raw).__name__}")
        return {k: copy.deepcopy(d) for k, (_, d, _) in fields.items()}
    out = {}
    for key in raw:
        if key not in fields:
            problems.add(f"{prefix}.{key}", f"unknown key; known: {', '.join(fields)}")
    for key, (tp, default, check) in fields.items():
        if key not in raw:
            out[key] = copy.deepcopy(default)
            continue
        ok, value = _typed_value(raw[key], tp, default, f"{prefix}.{key}", problems, int64=check is None)
        if not ok:
            continue
        reason = check(value) if check and value is not None else None
        if reason:
            problems.add(f"{prefix}.{key}", reason)
        out[key] = value
    return out


def _registry_block(raw, registry: dict, prefix: str, problems: _Problems, skip=(),
                    name_key: str = "name", extra: tuple[str, ...] = (), options: bool = True) -> dict | None:
    """Validate ``{name_key: <registry name>, **options}`` against the entry's signature.
    ``options=False``: the shape and the name only, never importing the entry (the options are
    returned unchecked)."""
    if isinstance(raw, str):
        raw = {name_key: raw}
    if not isinstance(raw, dict):
        problems.add(prefix, f"must be a mapping with a {name_key!r} key (or a bare name), got {shown(raw)}")
        return None
    name = raw.get(name_key)
    if name is None:
        problems.add(f"{prefix}.{name_key}", f"required; one of {', '.join(sorted(registry))}")
        return None
    if name not in registry:
        kind = name_key if name_key != "name" else prefix.split('.')[0].split('[')[0]  # eval entries: "attack"
        problems.add(f"{prefix}.{name_key}", f"unknown {kind} {shown(name)}; known: {', '.join(sorted(registry))}")
        return None
    if not options:
        return dict(raw)
    fields = _signature_fields(registry[name], skip)
    out = {k: raw[k] for k in (name_key, *extra) if k in raw}
    for key, value in raw.items():
        if key in (name_key, *extra):
            continue
        if key not in fields:
            problems.add(f"{prefix}.{key}", f"unknown option of {name!r}; known: {', '.join(fields) or 'none'}")
            continue
        tp, default = fields[key]
        ok, coerced = _typed_value(value, tp, default, f"{prefix}.{key}", problems)
        if ok:
            out[key] = coerced
    for key, (tp, default) in fields.items():
        if key in out:
            continue
        if default is inspect.Parameter.empty:
            if key not in raw:              # given with a wrong type: already said, once
                problems.add(f"{prefix}.{key}", f"required by {name!r}")
        else:
            out[key] = copy.deepcopy(default)
    return out


def _try_build(problems: _Problems, prefix: str, build: Callable[[], Any]):
    """Run a constructor to catch impossible values; its ValueError names the option."""
    try:
        return build()
    except (ValueError, TypeError, FileNotFoundError) as err:
        problems.add(prefix, str(err))
        return None
