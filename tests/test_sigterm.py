"""SIGTERM is handled as Ctrl-C while a command's Ray session is open (issue 28 §5): the real
``ray job stop`` of a submitted run is in ``tests/test_submit.py``; here the handler itself and
the command's exit code, without Ray."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from distfair.distributed.session import Terminated, sigterm_as_interrupt, sigterm_received


def test_sigterm_raises_terminated_once_then_is_ignored_and_the_old_handler_comes_back():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("old"))
    try:
        with pytest.raises(Terminated):
            with sigterm_as_interrupt():
                assert not sigterm_received()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)                         # the handler interrupts this
        assert sigterm_received() and isinstance(Terminated(), KeyboardInterrupt)
        with sigterm_as_interrupt():
            assert not sigterm_received()             # each session starts afresh
        # during the clean-up after the first SIGTERM a second one changes nothing
        with pytest.raises(Terminated):
            with sigterm_as_interrupt():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
                except Terminated:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    raise
        os.kill(os.getpid(), signal.SIGTERM)          # the handler from before is back
        time.sleep(0.2)
        assert seen == ["old"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    inside = []

    def work():
        with sigterm_as_interrupt():
            inside.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert inside == [before] and signal.getsignal(signal.SIGTERM) is before


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
