"""Reading configuration files: the raw YAML document (:func:`read_document`), one validated
configuration (:func:`load_config`) or the several of a ``configurations`` block
(:func:`load_configurations`), with ``--set`` overrides applied."""
from __future__ import annotations

from pathlib import Path

from distfair.config.schema import ConfigError
from distfair.config.yaml_input import read_yaml_documents
from distfair.config.overrides import _parsed_overrides, apply_overrides
from distfair.config.validation import check_structure, configuration_problems, validate


def read_document(path: str | Path) -> dict:
    """The YAML document of a config file, unvalidated (a mapping). Raises ConfigError."""
    source = str(path)
    # one line: `line N: ...`, binary, duplicate keys, not a regular file, over the size limits
    raw, problem = read_yaml_documents(path)
    if problem is not None:
        raise ConfigError(source, [problem])
    if raw is None:
        raise ConfigError(source, [("(file)", "empty file")])
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top level)", f"must be a mapping, got {type(raw).__name__}")])
    return raw



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

