"""What ``distfair cluster validate`` reports and how: a problem is ``(key path, reason)``, printed
as ``<file>: <key.path>: <reason>``; a :class:`FileReport` gathers one file's problems and
warnings. Also the JSON-schema machinery both kinds of file are checked with: every violation of
a schema as such problems (:func:`schema_problems`, one line per unknown key with a "did you
mean"), and :func:`close_object_schemas`, which makes a CRD schema strict about unknown keys."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

Problem = tuple[str, str]


# --------------------------------------------------------------------------------- results
@dataclass
class FileReport:
    """What checking one file found: its problems, or what it is and what it was checked with."""
    path: str
    problems: list[Problem] = field(default_factory=list)
    summary: str = ""
    skipped: bool = False
    warnings: list[Problem] = field(default_factory=list)     # reasons start with "warning: "

    def lines(self) -> list[str]:
        return [f"{self.path}: {key}: {reason}" for key, reason in self.problems + self.warnings]


def key_path(path) -> str:
    """``a.b[0].c``; a key that holds dots or other punctuation is bracketed: ``x[ray.head.cpu]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{part}]"
    return out or "(top level)"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value) -> str:
    return _one_line(repr(value), 80)


# --------------------------------------------------------------------------- JSON schemas
def _type_name(value) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _close_matches(word: str, known) -> str:
    match = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    if match:
        return f" (did you mean {match[0]!r}?)"
    names = sorted(known)
    return f"; known: {', '.join(names[:15])}{', ...' if len(names) > 15 else ''}" if names else ""


def _describe(error) -> list[tuple[list, str]]:
    """One jsonschema error as ``(path, reason)`` items (an unknown-keys error gives one per key)."""
    from jsonschema.exceptions import best_match

    path = list(error.absolute_path)
    schema, instance, kind = error.schema, error.instance, error.validator
    if kind == "additionalProperties" and isinstance(instance, dict) and schema.get("additionalProperties") is False:
        known = set(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in instance if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        return [(path + [k], "unknown key" + _close_matches(str(k), known)) for k in extra]
    if kind == "required" and isinstance(instance, dict):
        return [(path + [name], "required key missing") for name in error.validator_value if name not in instance]
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [(path, f"expected {expected}, got {_type_name(instance)} {_show(instance)}")]
    if kind == "enum":
        return [(path, f"must be one of {', '.join(map(str, error.validator_value))}; got {_show(instance)}")]
    if kind in ("anyOf", "oneOf") and error.context:
        return _describe(best_match(error.context))
    if kind == "const":
        return [(path, f"must be {error.validator_value!r}, got {_show(instance)}")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems", "pattern"):
        return [(path, f"{_show(instance)} violates {kind} {error.validator_value!r}")]
    return [(path, _one_line(error.message))]


def schema_problems(schema: dict, instance, prefix: list | None = None) -> list[Problem]:
    """Every violation of ``schema`` (a JSON schema) by ``instance``, as ``(key path, reason)``."""
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    found: list[Problem] = []
    errors = sorted(cls(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        for path, reason in _describe(error):
            item = (key_path((prefix or []) + path), reason)
            if item not in found:
                found.append(item)
    return found


def close_object_schemas(node):
    """The schema with ``additionalProperties: false`` added to every object schema that lists
    ``properties``, says nothing about additional properties and is not marked
    ``x-kubernetes-preserve-unknown-fields`` (strict unknown-key detection for CRD schemas,
    which Kubernetes treats as closed by pruning). Only schema positions are rewritten, never
    ``enum``/``default``/``example`` values."""
    if isinstance(node, list):
        return [close_object_schemas(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs") and isinstance(value, dict):
            out[key] = {name: close_object_schemas(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "additionalItems", "not", "anyOf", "oneOf", "allOf",
                     "if", "then", "else", "contains"):
            out[key] = close_object_schemas(value)
        else:
            out[key] = value
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out
