"""requirements.lock (the whole resolved environment, made by `./dev lock`) agrees with
pyproject.toml, pins the torch trio exactly, and is what this environment has installed."""
from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TRIO = ("torch", "torchvision", "torchaudio")
PLATFORMS = [  # the environments the lock is made for (uv --universal), as marker environments
    {"sys_platform": s, "platform_system": system, "platform_machine": m, "python_full_version": v,
     "python_version": v.rsplit(".", 1)[0], "implementation_name": "cpython", "os_name": os_name,
     "platform_python_implementation": "CPython", "extra": ""}
    for s, system, os_name, machines in [("linux", "Linux", "posix", ("x86_64", "aarch64")),
                                         ("darwin", "Darwin", "posix", ("arm64",)),
                                         ("win32", "Windows", "nt", ("AMD64",))]
    for m in machines for v in ("3.11.7", "3.12.3", "3.13.1")
]


def parse_lock(text: str) -> list[tuple[str, Version, Marker | None, int]]:
    """(name, version, marker, number of hashes) per entry of a hashed requirements file."""
    entries = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        block = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
        if not block.strip():
            continue
        head = block.split("\\", 1)[0].strip()
        req = Requirement(head)
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.lock: {head!r} is not an exact pin"
        entries.append((canonicalize_name(req.name), Version(spec.version), req.marker, block.count("--hash=sha256:")))
    return entries


def pyproject_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def disagreements(pyproject: dict, lock: list) -> list[str]:
    """Every pyproject.toml requirement that the lock does not satisfy on some platform it applies to."""
    problems = []
    for req in pyproject_requirements(pyproject):
        name = canonicalize_name(req.name)
        for env in PLATFORMS:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            pins = [v for n, v, m, _ in lock if n == name and (m is None or m.evaluate(env))]
            if not pins:
                problems.append(f"{req}: not in requirements.lock for {env['sys_platform']}/"
                                f"{env['platform_machine']}/python {env['python_version']}")
                break
            if not all(req.specifier.contains(v, prereleases=True) for v in pins):
                problems.append(f"{req}: requirements.lock pins {name}=={pins[0]}, which pyproject.toml excludes")
                break
    return problems


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def lock() -> list:
    return parse_lock((ROOT / "requirements.lock").read_text())


def test_the_lock_satisfies_every_pyproject_requirement(pyproject, lock):
    assert disagreements(pyproject, lock) == []


def test_a_pyproject_range_that_excludes_the_locked_version_is_caught(pyproject, lock):
    changed = {**pyproject, "project": {**pyproject["project"], "dependencies": [
        "optuna>=6" if r.startswith("optuna") else r for r in pyproject["project"]["dependencies"]]}}
    assert disagreements(changed, lock) == [f"optuna>=6: requirements.lock pins optuna=={lock_version(lock, 'optuna')}, "
                                            f"which pyproject.toml excludes"]
    added = {**pyproject, "project": {**pyproject["project"],
                                      "dependencies": pyproject["project"]["dependencies"] + ["tomli-w>=1"]}}
    assert disagreements(added, lock)[0].startswith("tomli-w>=1: not in requirements.lock")


def lock_version(lock: list, name: str) -> Version:
    return next(v for n, v, _, _ in lock if n == name)


def test_the_torch_trio_is_pinned_exactly_in_both(pyproject, lock):
    pins = {canonicalize_name(r.name): r for r in pyproject_requirements(pyproject)}
    for name in TRIO:
        (spec,) = pins[name].specifier
        assert spec.operator == "==", f"pyproject.toml: {pins[name]} is a range, not an exact pin"
        assert lock_version(lock, name) == Version(spec.version)


def test_every_entry_is_pinned_with_hashes(lock):
    assert len(lock) > 100
    assert [n for n, _, _, hashes in lock if hashes == 0] == []


def test_this_environment_is_the_lock():
    """What ./dev installed is exactly the lock (an environment a user brought is not checked)."""
    venv = Path(sys.prefix)
    if not (venv / ".distfair-install-stamp").exists():
        pytest.skip(f"{venv} was not installed by ./dev")
    env = {**PLATFORMS[0], "sys_platform": sys.platform, "platform_machine": os.uname().machine,
           "python_full_version": ".".join(map(str, sys.version_info[:3])),
           "python_version": ".".join(map(str, sys.version_info[:2]))}
    lock = parse_lock((ROOT / "requirements.lock").read_text())
    wrong = []
    for name, version, marker, _ in lock:
        if marker is not None and not marker.evaluate(env):
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}=={version}: not installed")
            continue
        if Version(installed.base_version if installed.local else str(installed)) != version:
            wrong.append(f"{name}=={version}: {installed} installed")
    assert wrong == []
