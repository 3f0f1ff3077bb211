"""Which attempt at an execution a process makes, carried in every graph record it writes.

``extras["attempt"] = {"n", "began_at", "owner"[, "from_seq"][, "frontier"][, "fork_of"]}``: ``n`` 0 is
the first run (or a fork's run), ``n`` k > 0 the k-th recovery of the same execution; ``began_at`` when
this process took the execution up (``time.time()``); ``owner`` the worker id that holds its lease (a
recovery by another owner took the lease over); ``from_seq`` the seq of the record a recovery resumed
from (its journal is what the recovery replayed); ``frontier`` the node a recovery continued from
without replaying that journal (``frontier``); ``fork_of`` the checkpoint a forked execution started from.

It is one small dict per process, built once and put into each record as it is stored (like the write
totals), so recording it costs the records nothing measurable. ``spark_ckpt.timeline`` reads it back.
"""

from __future__ import annotations

import time
from typing import Any

#: key of the attempt info in a graph record's ``extras``
ATTEMPT_KEY = "attempt"


def first_attempt(owner: str, *, fork_of: str | None = None) -> dict[str, Any]:
    attempt: dict[str, Any] = {"n": 0, "began_at": round(time.time(), 6), "owner": owner}
    if fork_of is not None:
        attempt["fork_of"] = fork_of
    return attempt


def next_attempt(resumed_extras: Any, owner: str, from_seq: int) -> dict[str, Any]:
    """The attempt of a recovery that resumes the record with ``resumed_extras`` (seq ``from_seq``):
    one more than that record's; 1 when it holds none (written before attempts were recorded)."""
    previous = resumed_extras.get(ATTEMPT_KEY) if isinstance(resumed_extras, dict) else None
    n = previous.get("n") if isinstance(previous, dict) else None
    number = n + 1 if type(n) is int and n >= 0 else 1
    return {"n": number, "began_at": round(time.time(), 6), "owner": owner, "from_seq": from_seq}
