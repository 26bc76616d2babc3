"""What distfair's rules share across launcher configs and KubeRay manifests: the trial drivers'
resource, the Ray version distfair pins and the Ray version a ``rayproject/ray`` image carries."""
from __future__ import annotations

import importlib.metadata
import re

#: the logical resource each sweep configuration's driver takes (distfair/distributed/sweep.py
#: TRIAL_RESOURCE; repeated here because importing that module imports Ray; a test keeps them equal)
TRIAL_RESOURCE = "distfair_trial"
_RAY_IMAGE = re.compile(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")


def pinned_ray_version() -> str | None:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def _ray_version_problem(image: str, pinned: str | None) -> str | None:
    match = _RAY_IMAGE.match(image or "")
    if match and pinned and match.group(1) != pinned:
        return (f"the image has Ray {match.group(1)}, but distfair pins ray {pinned} (pyproject.toml): "
                f"use a rayproject/ray:{pinned}-... image")
    return None


def _positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False
