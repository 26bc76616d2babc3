"""The package's shape: modules a newcomer can read in one sitting, and nothing of it hidden from git.

- No module is over :data:`MAX_LINES` lines unless its docstring says why, in one line starting
  with ``Over 400 lines because``.
- No file under ``distfair/`` is ignored by ``.gitignore`` (a pattern such as ``report/`` once
  matched ``distfair/report/``: a new module there would have been left out of every commit and
  every fresh clone).
- The README's architecture tree names every part of the package (and nothing that is gone).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "distfair"
MAX_LINES = 400
REASON = "Over 400 lines because"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_over_400_lines_without_a_stated_reason():
    long = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and REASON not in text[:3000]:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, "split these, or say why in the docstring ('Over 400 lines because ...'):\n" + "\n".join(long)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_package_file_is_ignored_by_git():
    files = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    out = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "", "ignored by .gitignore, so never committed:\n" + out.stdout


def test_a_gitignore_pattern_that_would_hide_a_package_folder_is_caught(tmp_path):
    """Guards the guard: the check above sees a folder pattern matching inside the package."""
    if shutil.which("git") is None:
        pytest.skip("no git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("report/\n")
    (tmp_path / "distfair" / "report").mkdir(parents=True)
    (tmp_path / "distfair" / "report" / "x.py").write_text("")
    out = subprocess.run(["git", "check-ignore", "--no-index", "distfair/report/x.py"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "distfair/report/x.py"


def test_the_readme_tree_names_every_part_of_the_package():
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("## Architecture", 1)[1].split("```")[1]
    named = set(re.findall(r"^[├└]── (\S+?)/?\s", tree, flags=re.M))
    parts = {p.name if p.is_dir() else p.name for p in PACKAGE.iterdir()
             if p.name != "__pycache__" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert named == parts, f"README tree vs package: missing {sorted(parts - named)}, gone {sorted(named - parts)}"
