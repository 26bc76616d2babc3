"""The ``distfair`` command line: a thin layer over ``distfair.experiment``.

One module per command (``run``, ``sweep``, ``submit``, ``relog``, ``gc``, ``analyze``, ``report``, ``race_replay``;
``cluster``'s parser comes from ``distfair.deploy``), each parsing its arguments, calling the
experiment layer, printing, and mapping the experiment layer's exceptions to exit codes
(``output.EXIT_CODES``); ``main`` builds the parser and runs a command; ``output`` holds what
they print with (stdout/stderr, ``--json``, the seeds' table). Ray, MLflow and torch are
imported only when a command needs them.
"""
from __future__ import annotations

from distfair.cli.main import build_parser, main
# also the names tests and scripts import from distfair.cli
from distfair.cli.output import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _HumanLog, _human_output,
                                 _json_safe, format_table, stdout_to_stderr)
from distfair.cli.run import _print_run_report, _resume_command
from distfair.cli.sweep import format_sweep

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "format_sweep",
           "format_table", "main", "stdout_to_stderr"]
