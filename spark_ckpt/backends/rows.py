"""Index rows read back from a store are checked before anything uses them.

A backend hands out headers (and execution heads) rebuilt from what it stored. A store changed
behind spark-ckpt's back (edited by hand, partly restored, or altered by whoever holds it) can give
a row a value of the wrong type or out of range; unchecked, that surfaces far away as a TypeError in
recovery or a crash in the CLI. Every built-in backend passes each row it reads through ``checked``,
so it surfaces here instead, as one ``CorruptIndexError`` naming the row and what to do.

The check is a handful of type tests per row: it runs on every listing.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import BackendError, CorruptIndexError
from ..model import AGENT, GRAPH, STATUSES, CheckpointHeader

KINDS = frozenset({GRAPH, AGENT})
_NUMBERS = (int, float)  # exact types: a bool is not a time


def problem(header: CheckpointHeader) -> str | None:
    """What is wrong with ``header``'s fields, or None when every one has its type and range."""
    h = header
    for name in ("checkpoint_id", "graph_id", "execution_id"):
        value = getattr(h, name)
        if not isinstance(value, str):
            return f"{name} is {_shown(value)}, not a string"
    if type(h.seq) is not int or h.seq < 0:
        return f"seq is {_shown(h.seq)}, not a whole number >= 0"
    if type(h.created_at) not in _NUMBERS or not _finite(h.created_at):
        return f"created_at is {_shown(h.created_at)}, not a finite time"
    if type(h.status) is not str or h.status not in STATUSES:
        return f"status is {_shown(h.status)}, not one of {', '.join(sorted(STATUSES))}"
    if type(h.kind) is not str or h.kind not in KINDS:
        return f"kind is {_shown(h.kind)}, not one of {', '.join(sorted(KINDS))}"
    if type(h.size) is not int or h.size < 0:
        return f"size is {_shown(h.size)}, not a whole number >= 0"
    if h.tag is not None and type(h.tag) is not bytes:
        return f"tag is {_shown(h.tag)}, not bytes"
    return None


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def checked(header: CheckpointHeader, store: str, *, row: str = "checkpoint") -> CheckpointHeader:
    """``header`` itself when it is sound; else ``CorruptIndexError`` naming the row in ``store``.
    ``row``: "checkpoint" (a stored header) or "head" (an execution's entry in the executions index)."""
    found = problem(header)
    if found is None:
        return header
    if row == "head":
        what = f"the executions index entry of execution {_shown(header.execution_id)}"
    else:
        what = f"the index row of checkpoint {_shown(header.checkpoint_id)}"
    raise CorruptIndexError(
        f"{what} in {store} is damaged ({found}): the store was changed outside spark-ckpt. Restore the "
        "store from a backup, or delete that checkpoint; `spark-ckpt verify` lists what else is damaged"
    )


def storable(header: CheckpointHeader, store: str) -> None:
    """``BackendError`` unless ``header`` is one ``checked`` would pass: a store never takes a row it
    would refuse to read back (``put`` asks before it writes anything)."""
    found = problem(header)
    if found is not None:
        raise BackendError(
            f"checkpoint {_shown(header.checkpoint_id)} was not stored in {store}: its header is invalid "
            f"({found}); nothing was written"
        )


def checked_blob(blob: Any, header: CheckpointHeader, store: str) -> bytes:
    """The stored bytes of ``header``'s checkpoint, refused unless they are bytes."""
    if type(blob) is bytes:
        return blob
    raise CorruptIndexError(
        f"the stored bytes of checkpoint {_shown(header.checkpoint_id)} in {store} are a "
        f"{type(blob).__name__}, not bytes: the store was changed outside spark-ckpt. Restore the store "
        "from a backup, or delete that checkpoint"
    )


def _shown(value: Any) -> str:
    """A short, safe rendering of a hostile value for an error message."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises is one more hostile value
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."
