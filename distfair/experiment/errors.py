"""What stops a command of the experiment layer, as exception types: the command line maps
each to an exit code (``distfair.cli.output``) and prints its lines as they are.

Every exception carries ``lines``: the complete error lines, each printed as ``error: <line>``
on stderr."""
from __future__ import annotations


class ExperimentError(Exception):
    """A command of the experiment layer stopped; ``lines``: what to print, one ``error:`` each."""

    def __init__(self, *lines: str):
        super().__init__(lines[0] if lines else "")
        self.lines = list(lines)


class Refused(ExperimentError):
    """Nothing was started: a bad file or override, storage that cannot be written, a store on
    one node's disk for a cluster, nothing to resume, a missing or mismatched reference
    checkpoint, a cluster too small for the scaling."""


class RunAborted(ExperimentError):
    """A run stopped on its way: the tracking server stayed away (what is not logged waits on
    disk) or the storage failed mid-run; its MLflow runs are closed."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM (``terminated``): the open MLflow runs were marked KILLED (again after
    Ray shut down). ``finished``: the names of the configurations of a ``configurations:`` file
    that finished before (``distfair run``); empty otherwise."""

    def __init__(self, finished: list[str] | None = None, *, terminated: bool = False):
        super().__init__("terminated" if terminated else "interrupted")
        self.finished = list(finished or [])
        self.terminated = terminated
