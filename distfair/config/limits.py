"""The limits on what a configuration may ask for (issue 28 §7, "Hostile inputs"), in one place,
and how a value is shown in an error message (:func:`shown`: never the whole of a huge one).

A configuration file is read, parsed and validated on the machine that submits the work, so a
file must not be able to make that step hang or take gigabytes: a YAML alias bomb (a few
hundred bytes that expand to a billion values), ``/dev/zero`` or a FIFO given as the file, a
model or a generated data set sized 1e10 (validation builds both), an integer of a million
digits. Every limit here is far beyond any study this package runs; docs/guide/configuration.md
lists them. Pure Python: no PyTorch, no YAML import.
"""
from __future__ import annotations

import reprlib

#: the largest configuration, sweep or cluster file read (bytes): the largest shipped one is a
#: few kilobytes. Only regular files are read (not a FIFO, a device or a directory).
MAX_FILE_BYTES = 1 << 20
#: the most values (scalars, lists and mappings) a YAML document may hold, each alias
#: (``*name``) counted as a copy of what it names: a 1 MiB file of short list items holds
#: some 500,000; the billion laughs expands to 10**9
MAX_YAML_VALUES = 100_000
#: the most characters of scalar text a YAML document may hold, aliases expanded as above
MAX_YAML_TEXT = 1 << 20
#: the longest integer written in a YAML file (digits): Python refuses to read one of more than
#: 4,300, and reading a long one costs time quadratic in its length; 2**64 has 20 digits
MAX_INTEGER_DIGITS = 100
#: every integer option must fit a signed 64-bit integer (PyTorch, NumPy and Ray take C integers)
INT64_BOUND = 1 << 63

#: how much of a key and of a reason an error line shows; the middle of a longer one is left out
MAX_SHOWN_KEY = 200
MAX_SHOWN_REASON = 2000

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 6
_repr.maxdict = 4
_repr.maxlevel = 3
#: the longest value shown in an error message
MAX_SHOWN_VALUE = 200
_repr.repr_int = lambda x, level: (repr(x) if x.bit_length() < 256 else      # noqa: E731
                                   f"<an integer of some {int(x.bit_length() * 0.30103) + 1} digits>")


def shown(value) -> str:
    """``repr(value)`` for an error message, shortened: a long string, a long list or a deep
    mapping shows its beginning with ``...`` (built without ever making the whole repr), at
    most about ``MAX_SHOWN_VALUE`` characters."""
    return shorten(_repr.repr(value), MAX_SHOWN_VALUE)


def shorten(text: str, limit: int) -> str:
    """``text`` of at most about ``limit`` characters: its middle left out, and said so."""
    text = str(text)
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    return f"{text[:head]} ... ({len(text) - head - tail} characters left out) ... {text[len(text) - tail:]}"


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (a newline, a tab, a bidirectional
    control such as U+202E) written as its escape, so an error line stays one line and reads as
    the characters it holds."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)

