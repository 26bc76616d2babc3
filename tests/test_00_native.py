"""First in the suite (pytest runs files in name order): every native library distfair uses
loads and runs one real kernel in this environment (torch, torchvision's ops, torchaudio's
resample, libsndfile, the eSpeak NG engine, scikit-learn, SciPy), and a broken one is reported
in one line naming the package pair, by ``distfair.native`` and by ``./dev``, not a traceback."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from distfair import native

ROOT = Path(__file__).resolve().parents[1]


def test_every_native_library_loads_and_runs():
    problems = native.check()
    assert problems == [], "\n".join(problems)


def test_a_library_that_fails_to_load_is_one_line_naming_the_package_pair():
    bad = ("torchaudio resample", ("torchaudio", "torch"),
           "raise OSError('libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')")
    good = native.PIECES[0]
    problems = native.check([good, bad])
    assert problems == [f"torchaudio resample: torchaudio {metadata.version('torchaudio')} with torch "
                        f"{metadata.version('torch')}: OSError: libtorchaudio.so: undefined symbol: "
                        f"torch_exception_get_what_without_backtrace"]


def test_a_library_that_crashes_the_process_is_named():
    crash = ("soundfile (libsndfile)", ("soundfile",), "import os; os.abort()")
    never = ("scipy", ("scipy",), "pass")
    problems = native.check([native.PIECES[0], crash, never])
    assert len(problems) == 1
    assert problems[0].startswith(f"soundfile (libsndfile): soundfile {metadata.version('soundfile')}: "
                                  f"loading it crashed the process (exit ")


def _fake_venv(tmp_path: Path, stub: Path) -> Path:
    """A $DISTFAIR_VENV whose python is this one with ``stub`` first on the path."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{stub}" exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return venv


def test_dev_prints_one_line_per_broken_library_not_a_traceback(tmp_path):
    stub = tmp_path / "stub" / "torchaudio"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise OSError('/x/lib/libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')\n")
    venv = _fake_venv(tmp_path, stub.parent)
    proc = subprocess.run([str(ROOT / "dev"), "check-native"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DISTFAIR_VENV": str(venv)})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert lines[0] == (f"native library check: torchaudio resample: torchaudio {metadata.version('torchaudio')} "
                        f"with torch {metadata.version('torch')}: OSError: /x/lib/libtorchaudio.so: undefined "
                        f"symbol: torch_exception_get_what_without_backtrace")
    assert len(lines) == 2 and lines[1].startswith("error: the environment")


@pytest.mark.parametrize("command", ["run", "sweep", "report", "cluster"])
def test_dev_passes_distfair_commands_through(command):
    """`./dev sweep ...` after `./dev quickstart` works without activating the environment."""
    venv = os.environ.get("DISTFAIR_VENV", ".venv")
    if not (ROOT / venv / ".distfair-install-stamp").exists():
        pytest.skip(f"{venv} was not installed by ./dev")
    proc = subprocess.run([str(ROOT / "dev"), command, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: distfair {command}")
