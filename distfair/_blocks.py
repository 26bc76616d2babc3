"""A configuration block as constructor keywords: the one helper shared by the configuration
layer (``distfair.config`` builds every block once to validate it) and the engine
(``distfair.engine.train`` builds them for real). A leaf module: it imports nothing of distfair,
so both layers may use it without the engine importing the configuration layer."""
from __future__ import annotations


def options(block: dict | None, *drop: str) -> dict:
    """``block`` without the keys in ``drop`` (``name`` and the like): the keyword arguments of
    the registry constructor the block names. ``None`` (an absent block) gives ``{}``."""
    return {k: v for k, v in (block or {}).items() if k not in drop}
