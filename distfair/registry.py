"""Helpers shared by the configuration layer and the math, importing nothing of distfair (a leaf):

- :func:`options`: a configuration block as constructor keywords (``distfair.config`` builds
  every block once to validate it, ``distfair.engine.train`` builds them for real);
- :class:`Registry` and :func:`lazy_package`: the registries (``ATTACKS``, ``DEFENSES``,
  ``MODELS``, ``DATASETS``, ``SUMMARIES``) name their entries as ``".module:Name"`` and import
  one on first use, and the registry packages import their exports on first use. Checking a
  configuration's structure and registry names therefore never imports PyTorch, torchvision,
  torchaudio or scikit-learn: a typo is reported in well under a second, not after the ~5 s
  those imports take (``tests/test_fast_validation.py``).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import MutableMapping
from typing import Any, Iterator


def options(block: dict | None, *drop: str) -> dict:
    """``block`` without the keys in ``drop`` (``name`` and the like): the keyword arguments of
    the registry constructor the block names. ``None`` (an absent block) gives ``{}``."""
    return {k: v for k, v in (block or {}).items() if k not in drop}


def _resolve(package: str, target: str) -> Any:
    """``".module:Name"`` (relative to ``package``) -> the object; ``".module"`` -> the module."""
    module, _, attr = target.partition(":")
    loaded = importlib.import_module(module, package)
    return getattr(loaded, attr) if attr else loaded


class Registry(MutableMapping):
    """A registry: name -> object, each entry given as ``".module:Name"`` relative to the
    registry's package and imported the first time it is looked up (``registry[name]``,
    ``.values()``, ``.items()``). Names, membership, order and length never import anything.
    Entries may be set and deleted like a dict's (tests register toy classes); a set entry is
    the object itself."""

    def __init__(self, package: str, entries: dict[str, str]):
        self.package = package
        self._targets: dict[str, str | None] = dict(entries)
        self._loaded: dict[str, Any] = {}

    def target(self, name: str) -> str | None:
        """Where ``name`` is defined, as an absolute ``"module:Name"`` (None for a set entry)."""
        target = self._targets[name]
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return f"{importlib.util.resolve_name(module, self.package)}:{attr}"

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            target = self._targets[name]       # KeyError for an unknown name, as a dict
            self._loaded[name] = _resolve(self.package, target)
        return self._loaded[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._targets[name] = None
        self._loaded[name] = value

    def __delitem__(self, name: str) -> None:
        del self._targets[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __repr__(self) -> str:
        return f"Registry({self.package!r}, {list(self._targets)})"


class _LazyPackage(types.ModuleType):
    """A package whose exports (``__lazy__``: name -> ``".module:Name"`` or ``".module"``) are
    imported on first access. An export named like a submodule (``distfair.evaluation.predict``,
    the function, and ``distfair/evaluation/predict.py``) stays the export when that submodule is
    imported, exactly as when the package imported everything eagerly."""

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("__lazy__", {}).get(name)
        if target is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = _resolve(self.__name__, target)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        target = self.__dict__.get("__lazy__", {}).get(name)
        if target is not None and ":" in target and isinstance(value, types.ModuleType):
            return                              # the import system binding the submodule
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("__lazy__", {})))


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make the (already executing) package ``name`` import ``exports`` on first access:
    call at the end of its ``__init__.py`` with ``lazy_package(__name__, {...})``."""
    module = sys.modules[name]
    module.__dict__["__lazy__"] = dict(exports)
    module.__class__ = _LazyPackage
