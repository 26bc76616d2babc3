"""Hostile inputs (issue 28 §7) that cannot be a file of the malformed corpus (tests/malformed/):
a FIFO, ``/dev/zero``, a directory, a file over the 1 MiB limit, an alias bomb given with
``--set``; and the copy of MLflow's key rule (``distfair.config.names``) against the installed
MLflow, so the two cannot drift apart.

Each refusal runs ``distfair.cli.main`` in a child process with a wall-clock timeout and a 2 GiB
address-space limit: a regression that hangs (a FIFO opened for reading) or expands a bomb
fails the test instead of hanging the suite or swapping the machine. The child times the
refusal itself (the interpreter's start-up left out) and reports its peak memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distfair.config.limits import MAX_FILE_BYTES, MAX_SHOWN_REASON, shown
from distfair.config.names import MAX_NAME_LENGTH, mlflow_key_problem, name_problem
from distfair.config.overrides import parse_override
from distfair.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 60
#: the refusal must take well under a second (measured in the child, start-up left out)
REFUSAL_S = 1.0
PEAK_MIB = 500

CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from distfair import cli
start = time.perf_counter()
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - start
try:                 # this process's peak memory (ru_maxrss would count the parent's, from before exec)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = 0
print(json.dumps({"code": code, "seconds": seconds, "peak_mib": peak}))
"""

BASE = """defense: {name: syfar, lambda_sym: 0.5}
dataset: {name: synthetic, num_samples: 60, num_classes: 3, dim: 6}
model: {name: mlp, hidden: 8}
train: {epochs: 1, batch_size: 16, lr: 0.05}
attack: {name: pgd, eps: 0.1, steps: 2}
seeds: [0]
"""

#: the billion laughs in flow style (one line, for --set): 9 levels of 9 aliases, 9**9 values
BOMB = "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")) + "]"


def refuse(tmp_path: Path, *argv: str) -> tuple[dict, str]:
    """Run ``distfair <argv>`` in a child (working directory, MLflow store and run storage in
    ``tmp_path``); return its report and its stderr, after checking it was refused (exit 2) in
    well under a second with little memory, one ``file: key: reason`` line, nothing created."""
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    db, storage = tmp_path / "mlflow.db", tmp_path / "storage"
    extra = [] if argv[0] == "cluster" else ["--tracking-uri", f"sqlite:///{db}", "--storage-path", str(storage)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, *argv, *extra], cwd=work, env=env, capture_output=True,
                             text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"distfair {' '.join(argv)[:200]} did not end within {CHILD_TIMEOUT_S} s")
    assert out.stdout.strip(), f"the child died (exit {out.returncode}):\n{out.stderr[-3000:]}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, f"exit {report['code']}:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr
    assert report["seconds"] < REFUSAL_S, report
    assert report["peak_mib"] < PEAK_MIB, report
    assert not db.exists() and not storage.exists() and not any(work.iterdir())
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("error: 1 problem")]
    assert len(lines) == 1 and len(lines[0]) < 4000, out.stderr[:4000]
    return report, lines[0]


# ---------------------------------------------------------------------- what is not a file
@pytest.mark.parametrize("command", [["run"], ["sweep"], ["cluster", "validate"]])
def test_a_fifo_is_refused_without_being_opened(tmp_path, command):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    _, line = refuse(tmp_path, *command, str(fifo))
    assert f"{fifo}: (file): not a regular file (a FIFO)" in line


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_refused_without_being_read(tmp_path):
    _, line = refuse(tmp_path, "run", "/dev/zero")
    assert line == "error: /dev/zero: (file): not a regular file (a character device); give a YAML file"


def test_a_directory_is_refused(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    _, line = refuse(tmp_path, "sweep", str(folder))
    assert f"{folder}: (file): not a regular file (a directory)" in line


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("{}\n# padding\n" + "#" * MAX_FILE_BYTES + "\n")
    _, line = refuse(tmp_path, "run", str(big))
    assert f"{big}: (file): too large: {big.stat().st_size} bytes; at most {MAX_FILE_BYTES} (1 MiB)" in line


# ------------------------------------------------------------------------- alias bombs
def test_an_alias_bomb_file_is_refused_at_once(tmp_path):
    """The classic billion laughs (709 bytes hung ``distfair run`` past 1 GB, issue 28 §7)."""
    lines = ["lol: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BASE.replace("seeds: [0]\n", "space:\n") + "".join(f"  {line}\n" for line in lines)
                    + "seeds: *i\n")
    assert bomb.stat().st_size < 1000
    _, line = refuse(tmp_path, "run", str(bomb))
    assert f"{bomb}: (file): more than 100000 values" in line


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_an_alias_bomb_given_with_set_is_refused_at_once(tmp_path, command):
    config = tmp_path / "config.yaml"
    config.write_text(BASE + "colour: blue\n")           # refused anyway: nothing can start
    _, line = refuse(tmp_path, command, str(config), "--set", f"seeds={BOMB}")
    assert ": --set: --set 'seeds=[&a [lol" in line and "more than 100000 values" in line


def test_parse_override_refuses_an_alias_bomb_and_a_huge_integer():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than 100000 values"):
        parse_override(f"seeds={BOMB}")
    with pytest.raises(ValueError, match="an integer of 5000 digits; at most 100"):
        parse_override("seeds=" + "7" * 5000)
    assert time.perf_counter() - start < REFUSAL_S
    assert parse_override("train.lr=0.01") == ("train.lr", 0.01)


# ----------------------------------------------------------------- values in messages
def test_a_huge_value_is_shown_short_and_every_line_stays_one_line():
    huge = [["x" * 1000] * 1000] * 1000          # 10**9 characters as a repr; shared, so small in memory
    start = time.perf_counter()
    text = shown(huge)
    assert time.perf_counter() - start < 0.1 and len(text) < 300, text
    assert shown(10 ** 4000) == "<an integer of some 4001 digits>"
    err = ConfigError("f.yaml", [("eval.subgroups.a\nb", "x" * 10_000_000), ("eval.attacks[0].name", "got 'a\u202eb'")])
    first, second = str(err).split("\n")
    assert first.startswith("f.yaml: eval.subgroups.a\\nb: xxx") and len(first) < MAX_SHOWN_REASON + 300
    assert "characters left out" in first
    assert second == "f.yaml: eval.attacks[0].name: got 'a\\u202eb'"


# ------------------------------------------------------------------- MLflow's key rule
KEYS = [
    "robust_acc", "pgd20/robust_acc", "val_pgd 20/group_acc/gender/F_mean", "eval.attacks.0.steps",
    "scaling.resources_per_worker.accelerator_type:H100", "pgd_1e-4/worst_class_acc", "é_ü", "数字", "٣", "ǅ",
    "a-b.c d", "_", "-", ".x", "x.", "a b ", " a", "x" * 250, "x" * 251, "a/" + "b" * 248,
    "", ".", "..", "./a", "a/.", "a/..", "../a", "/a", "a/", "a//b", "a/./b", "a/../b", "...", "a..b", "a/...",
    "a\nb", "\na", "a\tb", "a\rb", "a\x00b", "pgd\u202e02", "a\u200bb", "a\u00a0b", "a\u2028b",
    "a+b", "a|b", "a=b", "a,b", "a(b)", "a@b", "a#b", "a%b", "a~b", "a'b", 'a"b', "a\\b", "a*b", "a?b",
]


def _mlflow_accepts(key: str) -> bool:
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        validation._validate_metric_name(key)
        validation._validate_param_name(key)
        validation._validate_tag_name(key)
        validation._validate_length_limit("key", validation.MAX_ENTITY_KEY_LENGTH, key)
    except MlflowException:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="the rule copied is MLflow's off Windows")
def test_the_copied_key_rule_agrees_with_the_installed_mlflow():
    disagree = [key for key in KEYS if (mlflow_key_problem(key) is None) != _mlflow_accepts(key)
                and not key.endswith("\n")]
    assert not disagree, f"distfair.config.names no longer matches MLflow on {disagree}: copy its rule again"


def test_the_copied_key_rule_refuses_a_trailing_newline_that_mlflow_lets_through():
    assert _mlflow_accepts("abc\n") and mlflow_key_problem("abc\n") is not None


def test_every_accepted_name_makes_keys_mlflow_accepts():
    names = [k for k in KEYS if len(k) <= MAX_NAME_LENGTH] + ["pgd_1e-4", "pgd20", "gender", "age group"]
    accepted = [n for n in names if name_problem(n) is None]
    assert {"robust_acc", "pgd_1e-4", "é_ü", "a-b.c d", ".x"} <= set(accepted)
    for name in accepted:
        for key in (f"{name}/robust_acc", f"val_{name}/group_acc/{name}/F_mean", f"clean_group_acc/{name}/F"):
            assert _mlflow_accepts(key), key
    for name in ("..", ".", "...", "..x", "", "a/b", "a:b", "pgd\n20", "pgd\u202e02", "x" * (MAX_NAME_LENGTH + 1), 3):
        assert name_problem(name) is not None, name
