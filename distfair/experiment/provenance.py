"""What every run records about itself: the configuration's hash, the parent run's description,
the environment tags (versions, git state) and the resolved configuration as YAML."""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Mapping


def config_hash(cfg: dict) -> str:
    """Stable hash of the resolved configuration (seeds and search space excluded)."""
    body = {k: v for k, v in cfg.items() if k not in ("seeds", "space", "description")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_description(cfg: dict) -> str:
    """The parent run's MLflow description: the file's ``description`` and what its dataset
    requires every result to say (``distfair.data.DATASET_NOTICES``: spoken_words' voices are
    synthetic, not people)."""
    from distfair.data import DATASET_NOTICES

    parts = [str(cfg.get("description") or "").strip(), DATASET_NOTICES.get(cfg["dataset"]["name"], "")]
    return "\n\n".join(p for p in parts if p)


# ------------------------------------------------------------ what every run records about itself
#: packages whose versions every configuration and seed run records (tags ``distfair.version.<name>``)
VERSIONED_PACKAGES = ("torch", "torchvision", "torchaudio", "ray", "mlflow", "optuna")
#: the configuration run's tags that its seed runs carry too, so the UI filters seeds by configuration
SEED_IDENTITY_TAGS = ("distfair.config_hash", "distfair.config_file", "distfair.configuration", "distfair.defense",
                      "distfair.dataset", "distfair.sweep_run", "distfair.trial_id", "distfair.trial_params")
#: name of the resolved configuration artifact on configuration and seed runs
CONFIG_ARTIFACT = "config.yaml"


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, or None when git is missing, fails or hangs."""
    try:
        # --no-optional-locks: reading the state never writes the checkout's index
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout distfair runs from, or (None, None) when it is not
    one (an installed wheel, no git). Only a checkout whose top level holds this very package
    counts: a virtual environment inside some other repository is not distfair's commit.
    ``dirty``: tracked files differ from the commit (untracked files such as ``mlflow.db`` do
    not count)."""
    package = Path(package_dir) if package_dir else Path(__file__).resolve().parents[1]   # distfair/
    root = package.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root.resolve():
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if not commit:
        return None, None
    return commit, None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def environment_tags() -> dict[str, str]:
    """The MLflow tags that say what produced a run: ``distfair.version``, ``distfair.python``,
    ``distfair.version.<package>`` for :data:`VERSIONED_PACKAGES`, and from a git checkout
    ``distfair.git_commit``, ``distfair.git_dirty`` and MLflow's own ``mlflow.source.git.commit``
    (shown in the run's overview). Versions of the driver's environment (the process that
    creates the runs); read from package metadata, never from environment variables."""
    from distfair import __version__

    tags = {"distfair.version": __version__, "distfair.python": platform.python_version()}
    tags.update({f"distfair.version.{name}": _package_version(name) for name in VERSIONED_PACKAGES})
    commit, dirty = git_state()
    if commit:
        tags.update({"distfair.git_commit": commit, "mlflow.source.git.commit": commit})
        if dirty is not None:
            tags["distfair.git_dirty"] = str(dirty).lower()
    return tags


def _plain(value):
    """YAML-safe copy: tuples as lists, anything unknown as its text."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config_yaml(cfg: dict) -> str:
    """The fully resolved configuration (defaults filled in, overrides applied) as YAML that
    ``distfair run`` reads back."""
    import yaml

    return yaml.safe_dump(_plain(cfg), sort_keys=False, allow_unicode=True)
