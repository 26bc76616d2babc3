"""Imports run one way (house style, rule 1): the math never imports the layers that drive it.

Every module of the package is read with ``ast`` (no import is executed), and every import
of a ``distfair`` module is collected at any depth: at module top, inside functions and
classes, ``from distfair.x import y``, ``from distfair import x``, ``import distfair.x``,
relative imports and ``importlib.import_module("distfair.x")``. Each importing module belongs
to one *part* of the package (its first name below ``distfair``: ``engine``, ``tracking``,
``evaluation``, ...), and :data:`FORBIDDEN` says which parts it must never import.

The layers, bottom to top (a part may import what is below it):

- leaves: ``seeding`` (one integer seeds everything), ``registry`` (the registries and a config
  block as constructor keywords), ``native`` (the native-library check); they import nothing
  of distfair;
- the math, plain PyTorch: ``models``, ``data``, ``metrics``, ``attacks``; ``plotting`` (the
  drawing functions, matplotlib over metrics; no evaluation mode known); then ``evaluation``
  (imports attacks, data, metrics, plotting: its summaries draw their own figures); then
  ``defenses`` (SpecNorm counts its confusion matrix with ``evaluation``);
- ``results`` (the metric names and the versioned JSON result records, built from the
  engine's structured results and aggregated with ``metrics``; no MLflow);
- ``engine`` (trains one seed, then calls ``evaluation``);
- ``config`` (the file format, its schema checks, overrides and the sweep ``space``; validates
  by building the math's registries and ``evaluation``'s eval attacks and subgroups);
- ``report`` (``distfair report``'s tables, seed statistics with SciPy/statsmodels, figures from
  ``plotting``, the HTML/Markdown/CSV/JSON files, and the speech paper's meta-analysis; no
  MLflow, no Ray: ``cli`` reads the runs through ``tracking`` and logs the files);
- ``tracking`` (the only package that imports MLflow);
- ``distributed`` (the only package that imports Ray): runs ``engine`` on Ray Train and
  Tune, reads ``config``; what writes the MLflow record is passed in by the caller (a
  seed-logger factory, the trial context's functions);
- ``experiment`` (one configuration with its MLflow record, a sweep), ``cli`` on top;
- beside them, ``deploy`` (``distfair cluster validate``): YAML and jsonschema over the cluster
  definitions and Ray's packaged launcher schema (found without importing Ray); Ray's own
  offline config checks through ``distributed.launcher``, never starting Ray; of distfair at
  most ``config``'s schema machinery and ``distributed``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "distfair"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: parts above the math: none of them may be imported by a math part
DRIVERS = {"results", "engine", "config", "report", "tracking", "distributed", "experiment", "deploy", "cli"}
MATH = {"models", "data", "metrics", "attacks", "evaluation", "defenses", "plotting"}
#: part -> the parts it must never import (directly or inside a function)
FORBIDDEN: dict[str, set[str]] = {
    "__init__": {"*"},
    "registry": {"*"},
    "seeding": {"*"},
    "native": {"*"},        # python -m distfair.native: loads the native libraries in a child process
    "models": DRIVERS | {"defenses", "evaluation", "plotting"},
    "data": DRIVERS | {"defenses", "evaluation", "plotting"},
    "metrics": DRIVERS | {"defenses", "evaluation", "plotting"},
    "attacks": DRIVERS | {"defenses", "evaluation", "plotting"},
    "evaluation": DRIVERS | {"defenses"},
    "defenses": DRIVERS | {"plotting"},
    "plotting": DRIVERS | {"defenses", "evaluation", "models", "data", "attacks"},
    "results": DRIVERS | {"defenses", "plotting", "models", "data", "attacks"},
    "engine": DRIVERS - {"results"} | {"plotting"},
    "config": DRIVERS - {"results"},
    "report": DRIVERS - {"results"} | {"defenses", "evaluation", "models", "data", "attacks"},
    "tracking": {"engine", "distributed", "experiment", "deploy", "cli", "report"},
    "distributed": {"tracking", "experiment", "deploy", "cli", "report"},
    "experiment": {"deploy", "cli"},
    "cli": set(),
    # the plug-in contract checks (like optuna.testing): the math and the engine, nothing that drives them
    "testing": {"tracking", "distributed", "experiment", "cli", "deploy", "report", "config"},
    # `distfair cluster validate`: YAML and jsonschema, Ray's packaged launcher schema and offline
    # config checks (never starting Ray); of distfair, at most config (its schema machinery) and distributed
    "deploy": DRIVERS - {"config", "distributed"} | MATH | {"seeding", "registry", "__init__"},
}
#: third-party frameworks and the parts allowed to import each (``cluster`` only reads Ray's
#: packaged launcher schema and calls its offline config checks; it never starts Ray)
FRAMEWORK_HOME = {"ray": ("distributed",), "mlflow": ("tracking",)}


def _parts() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
            if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_name(path: Path) -> list[str]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    names = list(rel.parts)
    return names[:-1] if names[-1] == "__init__" else names


def imported_modules(source: str, module: list[str], is_package: bool) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``source``, at any depth. ``from a import b``
    gives ``a.b`` (b may be a module or an attribute; :func:`target_part` sorts that out)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                     # relative: resolved against the importing package
                package = module if is_package else module[:-1]
                base = package[:len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out += [(node.lineno, f"{prefix}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            out.append((node.lineno, node.args[0].value))
    return out


def target_part(dotted: str, parts: set[str]) -> str | None:
    """The part of distfair a dotted import name lands in; None outside distfair."""
    names = dotted.split(".")
    if names[0] != PACKAGE:
        return None
    if len(names) == 1 or names[1] not in parts:
        return "__init__"                       # ``import distfair``, ``from distfair import __version__``
    return names[1]


def _modules():
    return sorted(ROOT.rglob("*.py"))


def _violations() -> list[str]:
    parts = _parts()
    found = []
    for path in _modules():
        source_part = part_of(path)
        forbidden = FORBIDDEN[source_part]
        for line, dotted in imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py"):
            target = target_part(dotted, parts)
            if target is None or target == source_part:
                continue
            if "*" in forbidden or target in forbidden:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {source_part} imports {dotted} ({target})")
    return found


def test_every_part_has_a_place_in_the_table():
    """A new subpackage or module must be placed in a layer before it can be imported."""
    assert _parts() <= set(FORBIDDEN), f"not in FORBIDDEN: {sorted(_parts() - set(FORBIDDEN))}"


def test_imports_run_one_way():
    violations = _violations()
    assert not violations, "upward imports (see the layers in this file's docstring):\n" + "\n".join(violations)


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_HOME))
def test_each_framework_lives_in_one_part(framework):
    home = FRAMEWORK_HOME[framework]
    found = [f"{path.relative_to(ROOT.parent)}:{line}: imports {dotted}" for path in _modules()
             if part_of(path) not in home
             for line, dotted in imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")
             if dotted.split(".")[0] == framework]
    assert not found, f"{framework} may only be imported in distfair/{' or distfair/'.join(home)}:\n" + "\n".join(found)


def test_the_scanner_sees_imports_at_any_depth():
    """Guards the guard: an upward import hidden in a function, relative or dynamic, is found."""
    source = ("import distfair.engine.train\n"
              "def f():\n"
              "    from distfair.experiment.run import run_configuration_with_tracking\n"
              "    from .. import tracking\n"
              "    from distfair import experiment, __version__\n"
              "    import importlib; importlib.import_module('distfair.cli')\n")
    found = imported_modules(source, ["distfair", "defenses", "specnorm"], False)
    parts = _parts()
    assert [target_part(d, parts) for _, d in found] == [
        "engine", "experiment", "tracking", "experiment", "__init__", None, "cli"]
