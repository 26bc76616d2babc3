"""SIGTERM is handled as Ctrl-C while a command's Ray session is open (issue 28 §5): the real
``ray job stop`` of a submitted run is in ``tests/test_submit.py``; here the handler itself and
the command's exit code, without Ray."""
from __future__ import annotations

import subprocess
import sys

import pytest


#: run in a fresh interpreter: a signal is sent to the process itself, which must not be the
#: test session's (it hosts the session's Ray threads)
HANDLER_CHECK = r"""
import os, signal, threading, time
from distfair.distributed.session import Terminated, sigterm_as_interrupt, sigterm_received

seen = []
signal.signal(signal.SIGTERM, lambda *a: seen.append("old"))
try:
    with sigterm_as_interrupt():
        assert not sigterm_received()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)                          # the handler interrupts this
    raise SystemExit("no Terminated")
except Terminated:
    pass
assert sigterm_received() and isinstance(Terminated(), KeyboardInterrupt)
with sigterm_as_interrupt():
    assert not sigterm_received()              # each session starts afresh
try:                                           # during the clean-up a second SIGTERM changes nothing
    with sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            raise
    raise SystemExit("no Terminated")
except Terminated:
    pass
os.kill(os.getpid(), signal.SIGTERM)           # the handler from before is back
time.sleep(0.2)
assert seen == ["old"], seen
before = signal.getsignal(signal.SIGTERM)
inside = []

def work():
    with sigterm_as_interrupt():
        inside.append(signal.getsignal(signal.SIGTERM))

thread = threading.Thread(target=work)
thread.start()
thread.join()
assert inside == [before] and signal.getsignal(signal.SIGTERM) is before   # nothing off the main thread
print("ok")
"""


def test_sigterm_raises_terminated_once_then_is_ignored_and_nothing_is_installed_off_the_main_thread():
    done = subprocess.run([sys.executable, "-c", HANDLER_CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize("terminated, code, word", [(True, 143, "terminated (SIGTERM)"), (False, 130, "interrupted")])
def test_the_run_command_exits_143_after_sigterm_and_130_after_ctrl_c(tmp_path, monkeypatch, capsys, write_config,
                                                                     tiny_cfg_dict, terminated, code, word):
    from distfair import cli
    from distfair.experiment import run_plan
    from distfair.experiment.errors import RunInterrupted

    def stopped(plan, **kwargs):
        raise RunInterrupted(terminated=terminated)

    monkeypatch.setattr(run_plan, "execute_run", stopped)
    config = write_config(tiny_cfg_dict)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(config)]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"{word}: the runs were marked KILLED in MLflow") and "--resume" in err
