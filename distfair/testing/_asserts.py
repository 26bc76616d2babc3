"""Assertion helpers of the contract checks, so that ``distfair.testing`` needs no test runner."""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Iterator


class Raised:
    """What :func:`raises` caught: ``value`` is the exception (None until it was raised)."""
    value: BaseException | None = None


@contextmanager
def raises(kind: type[BaseException], match: str | None = None) -> Iterator[Raised]:
    """Assert that the block raises ``kind`` whose message matches the regular expression
    ``match`` (``re.search``), as ``pytest.raises`` does."""
    caught = Raised()
    try:
        yield caught
    except kind as err:
        if match is not None and not re.search(match, str(err)):
            raise AssertionError(f"{type(err).__name__} raised, but {str(err)!r} does not match {match!r}") from err
        caught.value = err
        return
    raise AssertionError(f"did not raise {kind.__name__}")


def close(a: float, b: float, *, rel: float = 1e-6, abs: float = 1e-12) -> bool:  # noqa: A002
    """``a`` equals ``b`` up to ``rel`` (relative) or ``abs`` (absolute), as ``pytest.approx``."""
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs)
