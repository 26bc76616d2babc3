"""What the user sees first: a typo in a configuration file is reported without importing the
heavy libraries (``distfair.config.check_structure``, ``distfair.registry.Registry``), and the
start scripts' cheap paths. No timing assertion: what is checked is what gets imported."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "tune_spaces" / "quickstart.yaml"
HEAVY = ("torch", "torchvision", "torchaudio", "sklearn", "ray", "mlflow")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)


VALIDATE = f"""
import json, sys
from distfair.config import ConfigError, load_configurations
try:
    load_configurations(sys.argv[1], sys.argv[2:])
    problems = []
except ConfigError as err:
    problems = err.problems
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"problems": problems, "heavy": heavy}}))
"""


@pytest.fixture(scope="module")
def typo_file(tmp_path_factory) -> Path:
    """The quickstart with ``epochs`` misspelt, as a user would."""
    text = QUICKSTART.read_text()
    assert "\n  epochs:" in text
    path = tmp_path_factory.mktemp("typo") / "typo.yaml"
    path.write_text(text.replace("\n  epochs:", "\n  epochz:"))
    return path


@pytest.mark.parametrize("overrides,key", [
    ([], "train.epochz"),
    (["defense.name=syfarr"], "defense.name"),                  # an unknown registry name
    (["eval.summaries={auc_ac: {}}"], "eval.summaries.auc_ac"),
])
def test_a_typo_is_reported_without_importing_torch(typo_file, overrides, key):
    out = _python(VALIDATE, str(typo_file), *overrides)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert key in {k for k, _ in result["problems"]}, result["problems"]
    assert result["heavy"] == [], f"validation imported {result['heavy']}"


def test_a_typo_in_one_of_several_configurations_is_reported_without_importing_torch(tmp_path):
    path = tmp_path / "several.yaml"
    path.write_text(QUICKSTART.read_text() + "\nconfigurations:\n  a: {train.lr: 0.1}\n  b: {attack.name: pgdd}\n")
    result = json.loads(_python(VALIDATE, str(path)).stdout)
    assert [k for k, _ in result["problems"]] == ["configurations.b: attack.name"]
    assert result["heavy"] == []


def test_the_guard_sees_torch_when_a_valid_file_is_built():
    """Guards the guard: a valid file is built (second pass), which does import torch."""
    out = _python(VALIDATE, str(QUICKSTART))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["problems"] == [] and "torch" in result["heavy"]


def test_cli_reports_the_typo_with_exit_2_and_imports_nothing_heavy(typo_file):
    code = ("import sys\nfrom distfair import cli\nrc = cli.main(['run', sys.argv[1]])\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\nsys.exit(rc)")
    out = _python(code, str(typo_file))
    assert out.returncode == 2
    assert f"{typo_file}: train.epochz: unknown key; known: epochs," in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.strip() == "[]"


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom distfair import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "distfair" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------- lazy registries
def _registries():
    from distfair.attacks import ATTACKS
    from distfair.data import DATASET_NOTICES, DATASETS
    from distfair.defenses import DEFENSES
    from distfair.evaluation.summaries import SUMMARIES
    from distfair.models import MODELS
    return {"ATTACKS": ATTACKS, "DATASETS": DATASETS, "DATASET_NOTICES": DATASET_NOTICES, "DEFENSES": DEFENSES,
            "MODELS": MODELS, "SUMMARIES": SUMMARIES}


@pytest.mark.parametrize("registry", ["ATTACKS", "DATASETS", "DATASET_NOTICES", "DEFENSES", "MODELS", "SUMMARIES"])
def test_every_registry_line_names_an_object_of_its_own_package(registry):
    """A registry line is a string: a misspelt module or class would only fail when used, and
    an entry outside the registry's package would hide an import from
    tests/test_import_direction.py. Each entry is defined in its own package's module (or, for a
    value such as a notice, at least lives there) and resolves."""
    reg = _registries()[registry]
    for name in reg:
        target = reg.target(name)
        if target is None:                   # set by another test module (a toy entry)
            continue
        module, _, attr = target.partition(":")
        assert module.startswith(reg.package + "."), f"{registry}[{name!r}] -> {target}"
        obj = reg[name]
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == module, f"{registry}[{name!r}] -> {target} is {obj.__module__}.{attr}"


def test_registry_behaves_as_a_dict():
    from distfair.registry import Registry

    reg = Registry("distfair.attacks", {"pgd": ".pgd:PGD", "nope": ".nope:Nope"})
    assert list(reg) == ["pgd", "nope"] and len(reg) == 2 and "nope" in reg
    reg["toy"] = int
    assert reg["toy"] is int and reg.target("toy") is None and list(reg) == ["pgd", "nope", "toy"]
    del reg["toy"]
    assert "toy" not in reg
    with pytest.raises(KeyError):
        reg["missing"]
    with pytest.raises(ModuleNotFoundError):    # a misspelt line fails when the entry is used
        reg["nope"]


def test_an_export_named_like_its_submodule_stays_the_export():
    """``distfair.evaluation.predict`` is the function (as when the package imported eagerly),
    even after ``distfair/evaluation/predict.py`` was imported on its own."""
    code = ("import importlib\nmodule = importlib.import_module('distfair.evaluation.predict')\n"
            "import distfair.evaluation as ev\n"
            "from distfair.evaluation import predict\n"
            "print(callable(predict) and not isinstance(predict, type(module)), ev.predict is predict,"
            " module.__name__)")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "distfair.evaluation.predict"]


# ------------------------------------------------------------------ the start script ./dev
DEV = ROOT / "dev"


def _dev(*args: str, venv: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISTFAIR_VENV")}
    if venv is not None:
        env["DISTFAIR_VENV"] = str(venv)
    return subprocess.run([str(DEV), *args], capture_output=True, text=True, env=env, timeout=60)


def test_dev_help_and_unknown_command():
    out = _dev("--help")
    assert out.returncode == 0
    assert "./dev quickstart" in out.stdout and "./dev test" in out.stdout
    bad = _dev("tset")
    assert bad.returncode == 2 and "unknown command tset" in bad.stderr


def test_dev_reinstalls_only_when_the_lock_pyproject_or_python_changed(tmp_path):
    """The stamp logic that makes `./dev test` and `./dev quickstart` skip the install: the
    environment is current exactly when its stamp records this requirements.lock, this
    pyproject.toml and its Python."""
    venv = tmp_path / "venv"
    assert _dev("status", venv=venv).returncode == 1                     # no environment
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    out = _dev("status", venv=venv)
    assert out.returncode == 1 and "never installed" in out.stdout
    lock = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    version = sys.version.split()[0]
    stamp = venv / ".distfair-install-stamp"
    stamp.write_text(f"requirements.lock {lock}; pyproject.toml {digest}; python {version}\n")
    out = _dev("status", venv=venv)
    assert out.returncode == 0 and "current" in out.stdout
    assert _dev("install", venv=venv).returncode == 0                    # current: no pip at all
    for edited in (f"requirements.lock {'0' * 64}; pyproject.toml {digest}; python {version}\n",   # lock regenerated
                   f"requirements.lock {lock}; pyproject.toml {'0' * 64}; python {version}\n",   # pyproject.toml edited
                   f"requirements.lock {lock}; pyproject.toml {digest}; python 3.0.0\n"):        # another Python
        stamp.write_text(edited)
        out = _dev("status", venv=venv)
        assert out.returncode == 1 and "changed" in out.stdout, edited
