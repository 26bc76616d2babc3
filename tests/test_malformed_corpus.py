"""The malformed-input corpus (issue 15, "Bad input"): every file under ``tests/malformed/``
is refused with exit code 2, one ``file: key: reason`` line per problem (``file: line N: ...``
for YAML syntax), no traceback, and nothing started: no Ray, no MLflow store, no storage.

One test per case file, found by walking the folder, so adding a case is adding a file
(``tests/malformed/README.md`` says how a case declares what it expects). The CLI runs
in-process (``distfair.cli.main``): a configuration that passed validation would start Ray in
this very process, so ``ray.is_initialized()`` afterwards is a real check that nothing started
(where the suite's shared instance is already up, the check is that no store, storage or
output was made, below).
"""
from __future__ import annotations

import re
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distfair import cli
from fake_faces import make_fake_faces

CORPUS = Path(__file__).parent / "malformed"
VIA = CORPUS / "_via"
COMMANDS = ("run", "sweep", "cluster validate")
#: cluster validate's closing count, the one stderr line that is not a problem
SUMMARY = re.compile(r"^error: \d+ problem\(s\) in \d+ of \d+ file\(s\)$")


@dataclass
class Case:
    path: Path
    command: str = ""
    via: str | None = None
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.relative_to(CORPUS).as_posix()


def _header_lines(path: Path) -> list[str]:
    """The expectation lines of a case: its ``<name>.expect`` sidecar, else its leading ``#`` lines."""
    sidecar = path.with_name(path.name + ".expect")
    if sidecar.exists():
        return [line.strip().lstrip("#").strip() for line in sidecar.read_text().splitlines() if line.strip()]
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def read_case(path: Path) -> Case:
    case = Case(path)
    for line in _header_lines(path):
        name, _, value = line.partition(":")
        value = value.strip()
        if name == "command":
            case.command = value
        elif name == "via":
            case.via = value
        elif name == "expect":
            case.expect.append(value)
    return case


def case_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".expect"
                  and p.name != "README.md" and VIA not in p.parents)


CASES = [read_case(p) for p in case_files()]


def test_corpus_is_complete_and_every_case_declares_its_expectation():
    assert len(CASES) >= 45
    for case in CASES:
        assert any(case.command.startswith(c) for c in COMMANDS), f"{case.id}: no known `command:`"
        assert case.expect, f"{case.id}: no `expect:` line"
        assert case.via is None or (VIA / f"{case.via}.yaml").is_file(), f"{case.id}: no _via/{case.via}.yaml"
    for sidecar in CORPUS.rglob("*.expect"):
        assert sidecar.with_suffix("").is_file(), f"{sidecar}: sidecar of no case"
    formats = {case.path.relative_to(CORPUS).parts[0] for case in CASES}
    assert {"config", "space", "cluster", "faces_metadata", "common_voice", "audiomnist_meta", "masks"} <= formats


# ------------------------------------------------------------------------- data roots
@pytest.fixture(scope="module")
def faces_root(tmp_path_factory) -> Path:
    return make_fake_faces(tmp_path_factory.mktemp("faces"), per_identity=6, size=16)


def _common_voice_root(base: Path, train_table: Path) -> Path:
    """A Common Voice locale folder: well-formed dev.tsv / test.tsv, the case as train.tsv."""
    root = base / "cv"
    (root / "clips").mkdir(parents=True)
    header = "client_id\tpath\tsentence\n"
    (root / "dev.tsv").write_text(header + "spk_dev\tdev1.mp3\tone\nspk_dev\tdev2.mp3\ttwo\n")
    (root / "test.tsv").write_text(header + "spk_test\ttest1.mp3\tone\nspk_test\ttest2.mp3\ttwo\n")
    for name in ("dev1", "dev2", "test1", "test2", "train1", "train2", "a"):
        (root / "clips" / f"{name}.mp3").touch()       # never read while validating
    shutil.copyfile(train_table, root / "train.tsv")
    return root


def _audiomnist_root(base: Path, meta: Path) -> Path:
    """An AudioMNIST folder with a few (never read) clips and the case as its metadata file."""
    data = base / "audiomnist" / "data"
    for speaker in ("01", "02"):
        (data / speaker).mkdir(parents=True)
        for digit in range(3):
            (data / speaker / f"{digit}_{speaker}_0.wav").touch()
    shutil.copyfile(meta, data / "audioMNIST_meta.txt")
    return data.parent


def _install(case: Case, tmp: Path, faces_root: Path) -> tuple[Path, Path]:
    """(the file the command reads, the malformed file as the command finds it)."""
    if case.via is None:
        return case.path, case.path
    if case.via == "common_voice_train":
        root = _common_voice_root(tmp, case.path)
        installed = root / "train.tsv"
    elif case.via == "audiomnist_meta":
        root = _audiomnist_root(tmp, case.path)
        installed = root / "data" / "audioMNIST_meta.txt"
    else:
        root, installed = faces_root, case.path
    config = tmp / f"{case.via}.yaml"
    config.write_text((VIA / f"{case.via}.yaml").read_text()
                      .replace("{root}", str(root)).replace("{case}", str(installed)))
    return config, installed


# ------------------------------------------------------------------------------ cases
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_file_is_refused_before_anything_starts(case, tmp_path, monkeypatch, capsys, faces_root):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target, installed = _install(case, tmp_path, faces_root)
    db, storage = tmp_path / "mlflow.db", tmp_path / "storage"
    words = case.command.split()
    if case.command.startswith("cluster validate"):
        argv = ["cluster", "validate", str(target), *words[2:]]
    else:
        argv = [words[0], str(target), *words[1:], "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(storage)]

    ray = sys.modules.get("ray")
    up_before = ray is not None and ray.is_initialized()        # the suite's shared instance (conftest)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:                         # noqa: BLE001 - a traceback is the failure
        pytest.fail(f"{case.id}: the CLI raised instead of refusing:\n{traceback.format_exc()}")
    finally:
        ray = sys.modules.get("ray")
        started = ray is not None and ray.is_initialized() and not up_before
        if started:
            ray.shutdown()
    out, err = capsys.readouterr()

    assert not started, f"{case.id}: Ray was started"
    assert code == 2, f"{case.id}: exit {code}\n{err}"
    assert "Traceback" not in err + out
    # nothing recorded: no MLflow store (given or default), no run storage
    assert not db.exists() and not storage.exists()
    assert not any((work / name).exists() for name in ("mlflow.db", "mlruns", "distfair_runs")), \
        sorted(p.name for p in work.iterdir())

    # one line per problem, each naming the file the command read; nothing else but the count
    lines = [line for line in err.splitlines() if line.strip()]
    source = str(target)
    problems = [line.removeprefix("error: ") for line in lines if line.removeprefix("error: ").startswith(source + ":")
                or line.removeprefix("error: ").startswith(source + " (with --set")]
    others = [line for line in lines if line.removeprefix("error: ") not in problems and not SUMMARY.match(line)]
    assert problems and not others, f"{case.id}: lines not in the form `{source}: key: reason`:\n{err}"
    for problem in problems:
        rest = problem.split(": ", 1)[1]
        assert re.match(r"^\S[^:]*: \S", rest), f"{case.id}: not `file: key: reason`: {problem}"
    # exactly the declared problems, each once: no second line for one problem, none missing
    assert len(problems) == len(case.expect), f"{case.id}: {len(problems)} problem lines, expected " \
                                              f"{len(case.expect)}:\n{err}"
    unmatched = list(problems)
    for expected in case.expect:
        line = next((p for p in unmatched if matches(expected, p.removeprefix(source))), None)
        assert line is not None, f"{case.id}: no problem line matches {expected!r}:\n{err}"
        unmatched.remove(line)
    if case.via is not None:                      # the line names the malformed file itself
        assert str(installed) in problems[0] or installed.name in problems[0], \
            f"{case.id}: {problems[0]!r} does not name {installed}"


def matches(expected: str, line: str) -> bool:
    """Whether ``line`` holds the parts of ``expected`` (separated by `` ... ``) in order."""
    at = 0
    for part in expected.split(" ... "):
        at = line.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True
