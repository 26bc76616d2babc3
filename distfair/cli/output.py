"""What the command line writes: stdout and stderr (one JSON object on stdout with ``--json``,
human-readable output on stderr then), the ``[distfair]`` progress lines, the seeds' table,
JSON output, and the exit codes with the exception types of the experiment layer they map.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Iterator, TextIO

from distfair.experiment.errors import ExperimentError, Refused, RunAborted, RunInterrupted

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C: the open runs were marked KILLED (continue with --resume)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143          # 128 + SIGTERM, as a shell reports a process SIGTERM ended

#: the exit code of each exception type of the experiment layer (``distfair.experiment.errors``)
EXIT_CODES: dict[type, int] = {Refused: EXIT_USAGE, RunAborted: EXIT_FAILED, RunInterrupted: EXIT_INTERRUPTED}


def exit_code(err: BaseException) -> int:
    """The exit code of an exception of the experiment layer (the nearest type in
    :data:`EXIT_CODES`)."""
    for kind in type(err).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    raise TypeError(f"no exit code for {type(err).__name__}")


def fail(err: ExperimentError) -> int:
    """Print the error's lines (``error: <line>`` each, on stderr); return its exit code."""
    for line in err.lines:
        print(f"error: {line}", file=sys.stderr)
    return exit_code(err)


def _json_safe(obj):
    """NaN/inf are not JSON: they become null (also inside tuples; dict keys become strings).
    The one implementation is ``distfair.report.render``'s, imported when first used (it
    imports the report package, which a command refusing a bad file must not pay for)."""
    from distfair.report.render import _json_safe as json_safe

    return json_safe(obj)


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[TextIO]:
    """While enabled, everything written to fd 1 (ours, Ray's log forwarding, C libraries) goes
    to stderr; yields a stream on the real stdout for the one JSON object."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w")
    python_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        yield real
    finally:
        sys.stdout = python_stdout
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.flush()
        real.close()


def _human_output(json_mode: bool):
    """(stream for human-readable output, a ``[distfair]``-prefixed logger writing to it):
    stderr when stdout is reserved for the JSON object, else stdout."""
    human = sys.stderr if json_mode else sys.stdout
    return human, _HumanLog(human)


class _HumanLog:
    """``log(msg)``: one ``[distfair]`` line on ``stream``, the command's only writer to the
    terminal while Ray's output goes to the log file (progress bars draw on ``stream`` too).
    The prefix is coloured only on a terminal, and never when NO_COLOR is set (no-color.org)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.colour = _isatty(stream) and not os.environ.get("NO_COLOR")

    def __call__(self, msg: str) -> None:
        prefix = "\033[36m[distfair]\033[0m" if self.colour else "[distfair]"
        print(f"{prefix} {msg}", file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4f}"




def _interval(s: dict) -> str:
    """``[low, high]``: the 95% interval the configuration run logs as ``<metric>_ci95_low/_high``."""
    if s.get("ci95_low") is None or s.get("ci95_high") is None:
        return "—"
    return f"[{_fmt(s['ci95_low'])}, {_fmt(s['ci95_high'])}]"


def format_table(metrics: dict[str, dict], extra_attacks: list[str], primary: str | None = None) -> str:
    """The seeds' table of one configuration: per headline metric mean ± std, the 95% interval,
    min, max and n. ``primary``: the first ``eval.attacks`` entry, whose metrics the seed runs
    log bare as well as ``<primary>/<metric>``: its rows are named with it (``robust_acc
    (pgd20)``, ``distfair.results.record.evaluation_label``), as the other attacks' rows are by their
    prefix (``fgsm/robust_acc``). ``worst10_acc`` is left out where it equals
    ``worst_class_acc`` for every seed (always with at most 10 classes)."""
    from distfair.metrics import worst10_is_worst_class
    # the table's rows, one list for every consumer (distfair.results.names; imported here, as it
    # loads torch, which a refused file must not pay for): the headline metrics, the primary
    # attack's subgroup summaries (one row per attribute) and the cross-evaluation summaries
    from distfair.results.names import (HEADLINE, SUBGROUP_HEADLINE, SUMMARY_HEADLINE, SUMMARY_HEADLINE_FAMILIES, TEST,
                                        MetricKey)
    from distfair.results.record import evaluation_label

    names = [n for n in HEADLINE if n in metrics]
    if "worst10_acc" in names and "worst_class_acc" in metrics and worst10_is_worst_class(
            metrics["worst10_acc"].get("values") or [], metrics["worst_class_acc"].get("values") or []):
        names.remove("worst10_acc")
    names += sorted(n for n in metrics if n.startswith(SUBGROUP_HEADLINE))
    names += [n for n in SUMMARY_HEADLINE if n in metrics]
    names += sorted(n for n in metrics if n.startswith(SUMMARY_HEADLINE_FAMILIES))
    for attack in extra_attacks:
        names += [n for n in (MetricKey.of(TEST, attack, "acc").mlflow_key(),
                              MetricKey(TEST, attack, "worst_class_acc").mlflow_key()) if n in metrics]
    names += [n for n in ("train_time_s",) if n in metrics]
    labels = {n: evaluation_label(n, metrics, primary) for n in names}
    width = max(len(label) for label in labels.values()) if names else 10
    lines = [f"{'metric':<{width}}  {'mean ± std':>17}  {'95% CI':<18}  {'min':>7}  {'max':>7}  n"]
    for name in names:
        s = metrics[name]
        lines.append(f"{labels[name]:<{width}}  {_fmt(s['mean']):>8} ± {_fmt(s['std']):<6}  {_interval(s):<18}  "
                     f"{_fmt(s['min']):>7}  {_fmt(s['max']):>7}  {s['n']}")
    return "\n".join(lines)
