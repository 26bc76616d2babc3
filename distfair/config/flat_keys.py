"""A resolved configuration as flat dotted keys (MLflow parameters, report columns)."""
from __future__ import annotations

from typing import Any


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
