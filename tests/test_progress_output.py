"""What the user sees: the driver is the terminal's only writer. Ray's, Tune's, Optuna's,
MLflow's and the workers' output go to a log file (:func:`output_to_file`); distfair's own
lines are coloured only on a terminal (never with NO_COLOR); a sweep shows configurations
done/total, an ETA and the best objective so far. No Ray instance is started here: the real
commands are checked in tests/test_ray_run.py (``distfair run``'s captured output)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from distfair.distributed.session import session_log_path
from distfair.config.space import Target

ANSI = re.compile(r"\x1b\[")


def test_output_to_file_takes_everything_but_the_drivers_own_stream(tmp_path):
    """In a process of its own, with real file descriptors 1 and 2 (as the CLI has)."""
    log = tmp_path / "logs" / "x.log"
    script = textwrap.dedent(f"""
        import logging, sys, warnings
        early = logging.getLogger("mlflow")          # bound to the terminal before the session
        early.addHandler(logging.StreamHandler(sys.stderr)); early.propagate = False
        human = sys.stdout                           # what the CLI keeps before the session
        from distfair.distributed.session import output_to_file
        with output_to_file({str(log)!r}):
            print("worker says hi")                  # Ray forwards worker lines with print
            print("\\x1b[36m(pid=1)\\x1b[0m coloured", file=sys.stderr)
            early.warning("mlflow says hi")
            logging.getLogger("ray").error("E core_worker.cc: the actor restart will fail")
            warnings.warn("a library warning")
            late = logging.getLogger("optuna")       # a library imported during the session
            late.addHandler(logging.StreamHandler()); late.propagate = False
            late.warning("A new study created in memory")
            print("[distfair] seed 0: epoch 1/1", file=human, flush=True)
        print("after the session")
        late.warning("late after the session")
        early.warning("early after the session")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[distfair] seed 0: epoch 1/1\nafter the session\n"
    assert proc.stderr == "late after the session\nearly after the session\n"
    text = log.read_text()
    for line in ("worker says hi", "(pid=1) coloured", "mlflow says hi", "core_worker.cc", "a library warning",
                 "A new study created in memory"):
        assert line in text
    assert not ANSI.search(text) and "epoch 1/1" not in text and "after the session" not in text


def _with_pty(fn):
    """``fn(stream)`` with ``stream`` writing to a real pseudo-terminal; returns what it showed."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))    # 24 rows x 120 columns
    stream = open(slave, "w", buffering=1)
    try:
        fn(stream)
        stream.flush()
        shown = b""
        os.set_blocking(master, False)
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            shown += chunk
        return shown.decode(errors="replace")
    finally:
        stream.close()
        os.close(master)


def test_human_log_is_coloured_only_on_a_terminal_and_never_with_no_color(tmp_path, monkeypatch):
    from distfair.cli import _HumanLog

    monkeypatch.delenv("NO_COLOR", raising=False)
    shown = _with_pty(lambda stream: _HumanLog(stream)("hello"))
    assert "\x1b[36m[distfair]\x1b[0m hello" in shown
    monkeypatch.setenv("NO_COLOR", "1")
    shown = _with_pty(lambda stream: _HumanLog(stream)("hello"))
    assert "[distfair] hello" in shown and not ANSI.search(shown)
    monkeypatch.delenv("NO_COLOR")
    with open(tmp_path / "out.txt", "w") as f:               # a file or a pipe: plain
        _HumanLog(f)("hello")
    assert (tmp_path / "out.txt").read_text() == "[distfair] hello\n"


def _trial(trial_id: str, result: dict | None = None, status: str | None = None):
    from ray.tune.experiment import Trial

    trial = Trial("sweep_trial", config={}, trial_id=trial_id, stub=True)
    if result is not None:
        trial.update_last_result(result)
    if status is not None:
        trial.set_status(status)
    return trial


def test_sweep_progress_counts_configurations_keeps_the_best_and_gives_an_eta():
    from distfair.distributed.sweep import SweepProgress

    lines: list[str] = []
    progress = SweepProgress(4, [Target(metric="val_worst_class_acc", stat="mean", mode="max"),
                                 Target(metric="val_robust_gap", stat="mean", mode="min")], lines.append)
    name_max, name_min = (t.name for t in progress.targets)
    # a resumed sweep: one configuration had finished before (it counts, but not in the rate)
    progress.begin([_trial("t0", {"final": 1, name_max: 0.5, name_min: 0.3}, "TERMINATED"), _trial("t1")])
    assert progress.done == 1 and progress.initial == 1 and progress.eta_s() is None
    progress.finish(_trial("t1", {"final": 1, name_max: 0.7, name_min: 0.4}), failed=False)
    progress.finish(_trial("t1", {"final": 1, name_max: 0.7, name_min: 0.4}), failed=False)   # counted once
    progress.finish(_trial("t2", {"final": 0, "seeds_done": 1}), failed=True)
    assert progress.done == 3 and progress.failed == 1 and progress.eta_s() is not None
    assert progress.best == {name_max: (0.7, "t1"), name_min: (0.3, "t0")}
    assert lines[0].startswith("configurations 2/4 done | ETA ")
    assert lines[1].startswith("configurations 3/4 done (1 failed) | ETA ")
    assert f"best {name_max}=0.7 (t1), best {name_min}=0.3 (t0)" in lines[1]
    assert len(lines) == 2


def test_sweep_progress_draws_a_bar_on_a_terminal_and_lines_above_it(monkeypatch):
    from distfair.cli import _HumanLog
    from distfair.distributed.sweep import SweepProgress

    monkeypatch.setenv("NO_COLOR", "1")

    def run(stream):
        log = _HumanLog(stream)
        progress = SweepProgress(2, [Target(metric="val_clean_acc", stat="mean", mode="max")], log)
        progress.begin([])
        progress.write("t1 a=1 | seeds 1/2")
        progress.finish(_trial("t1", {"final": 1, progress.targets[0].name: 0.9}), failed=False)
        progress.close()

    shown = _with_pty(run)
    assert "[distfair] t1 a=1 | seeds 1/2" in shown
    assert "configurations" in shown and "1/2" in shown and "best val_clean_acc" in shown and "0.9 (t1)" in shown


def test_the_log_file_lives_under_the_storage_path(tmp_path):
    path = session_log_path(tmp_path / "runs", "run-quickstart")
    assert path.parent == (tmp_path / "runs" / "logs").resolve()
    assert re.fullmatch(r"run-quickstart-\d{8}-\d{6}-\d+\.log", path.name)
    assert session_log_path(f"file://{tmp_path}", "x").parent == (tmp_path / "logs").resolve()
    # object storage is not a local folder: the log stays in the working directory
    assert session_log_path("s3://bucket/runs", "x").parent == (Path("distfair_runs") / "logs").resolve()
