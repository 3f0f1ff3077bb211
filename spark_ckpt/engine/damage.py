"""Turning a stored record back into a graph or an agent: when that fails, the record is damaged.

A record that passed its checksum (a hand edit, a crafted file, a bug in an old writer) can still
hold content of the wrong shape: a string where a list goes, a key missing, nesting deeper than
Python recurses. Rebuilding records, Spark messages or agent state from it then fails with whatever
the failing line raises: TypeError, KeyError, IndexError, cattrs' or pydantic's validation errors,
RecursionError. ``damaged`` reports those as one ``CorruptCheckpointError`` that names the record,
so callers see the error hierarchy they were promised and recovery can fall back past it.

It wraps only spark-ckpt's own decoding and restoring, never a user's node, tool or model: what
those raise during a live run propagates as it is.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from cattrs import BaseValidationError

from ..errors import CorruptCheckpointError, SparkCkptError

#: what rebuilding malformed content raises (pydantic's ValidationError is a ValueError)
DAMAGE: tuple[type[BaseException], ...] = (
    TypeError, KeyError, IndexError, ValueError, AttributeError, RecursionError, OverflowError, BaseValidationError,
)


@contextmanager
def damaged(what: str) -> Iterator[None]:
    """Report content that cannot be rebuilt as ``CorruptCheckpointError`` naming ``what`` (e.g.
    ``"checkpoint ck-ex-1-3"``); spark-ckpt's own errors pass through unchanged."""
    try:
        yield
    except SparkCkptError:
        raise
    except DAMAGE as exc:
        raise CorruptCheckpointError(
            f"{what} is damaged: {brief(exc)}. Use an earlier checkpoint; `spark-ckpt verify` lists the "
            "damaged ones"
        ) from exc


def brief(exc: BaseException) -> str:
    """``Type: first line of the message``, cut short (a validation error can run to pages)."""
    try:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    except Exception:  # a message that cannot be rendered is one more damaged value
        text = ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
