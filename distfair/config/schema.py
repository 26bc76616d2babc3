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


class ConfigError(ValueError):
    """One or more problems in a configuration, each ``(key, reason)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {key}: {reason}" for key, reason in problems))


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
def _typed_value(value, tp, default, key: str, problems: _Problems) -> tuple[bool, Any]:
    """Check one value against its annotation; null is allowed where the default is null."""
    if value is None and default is None:
        return True, None
    ok, coerced = _coerce(value, tp)
    if not ok:
        problems.add(key, f"must be {_describe(tp)}, got {value!r}")
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
        ok, value = _typed_value(raw[key], tp, default, f"{prefix}.{key}", problems)
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
        problems.add(prefix, f"must be a mapping with a {name_key!r} key (or a bare name), got {raw!r}")
        return None
    name = raw.get(name_key)
    if name is None:
        problems.add(f"{prefix}.{name_key}", f"required; one of {', '.join(sorted(registry))}")
        return None
    if name not in registry:
        kind = name_key if name_key != "name" else prefix.split('.')[0].split('[')[0]  # eval entries: "attack"
        problems.add(f"{prefix}.{name_key}", f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
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


# ------------------------------------------------------------------------------ YAML files
def _yaml_loader():
    """A safe YAML loader (libyaml's parser where installed) that refuses a key given twice in
    one mapping: plain YAML loaders keep the last value silently, so ``train:`` written twice
    would drop the first block without a word."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark)
                    except TypeError:            # an unhashable key: the constructor says so
                        continue
                    if first is not key_node.start_mark:
                        raise DuplicateKey(key, first, key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


class DuplicateKey(Exception):
    """A mapping key given twice (``line``: the second, 1-based)."""

    def __init__(self, key, first_mark, mark):
        self.key, self.first_line, self.line = key, first_mark.line + 1, mark.line + 1
        super().__init__(f"line {self.line}: {key}: duplicate key (first at line {self.first_line})")


def yaml_problem(err: Exception) -> tuple[str, str]:
    """``(key, reason)`` of a YAML file that does not load, on one line: ``("line N", ...)``
    where the parser knows the line."""
    if isinstance(err, DuplicateKey):
        return f"line {err.line}", (f"{err.key}: duplicate key (first at line {err.first_line}); YAML would keep "
                                    f"only the last, so remove one")
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context = " ".join(str(getattr(err, "context", None) or "").split())
    if mark is None:
        return "(file)", f"invalid YAML: {problem}"
    where = f" (column {mark.column + 1}" + (f", {context} at line {err.context_mark.line + 1})"
                                              if context and getattr(err, "context_mark", None) else ")")
    return f"line {mark.line + 1}", f"invalid YAML: {problem}{where}"


def read_yaml_documents(path, *, all_documents: bool = False):
    """The YAML document(s) of a file, or ``(key, reason)`` saying why there are none usable:
    unreadable, not UTF-8 text, a syntax error (``line N``), a duplicate key. Returns
    ``(documents, None)`` or ``(None, (key, reason))``; ``documents`` is the one document
    (possibly None) or, with ``all_documents``, the list of non-null documents."""
    import yaml

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return None, ("(file)", f"cannot read: {err.strerror or err}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, ("(file)", f"not a text file (not UTF-8: byte {data[err.start]:#04x} at offset {err.start})")
    if "\x00" in text:
        return None, ("(file)", f"not a text file (a NUL byte at line {text[:text.index(chr(0))].count(chr(10)) + 1})")
    try:
        if all_documents:
            return [d for d in yaml.load_all(text, Loader=_yaml_loader()) if d is not None], None
        return yaml.load(text, Loader=_yaml_loader()), None
    except (yaml.YAMLError, DuplicateKey) as err:
        return None, yaml_problem(err)
