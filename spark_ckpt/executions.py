"""Executions by name: checking an id a user chose, listing executions, and what to say when the one
asked for is not there.

An execution id is a key of the whole store (its executions index is keyed by it), not of one graph
id: a name is taken once per store, whichever graph used it. A chosen id is checked before anything
is stored: characters every backend keys alike, a length every backend can hold (the store itself is
asked with ``check_header``), so a bad name is a ``ConfigError`` and never a half-written execution.

No Spark import.
"""

from __future__ import annotations

import difflib
import time
import unicodedata
from typing import Any

import attrs

from .errors import BackendError, ConfigError, ExecutionExistsError
from .model import COMPLETED, STATUSES, UNFINISHED_STATUSES, CheckpointHeader, canonical_checkpoint_id

#: an execution id's longest UTF-8 form: every backend's keys and file names hold it with room to spare
MAX_EXECUTION_ID_BYTES = 100
#: besides letters and digits (any script)
ID_PUNCTUATION = "-_.:@+="
#: ``list_executions(status=...)``: a stored status, or "unfinished" (running, failed or waiting)
STATUS_FILTERS = (*sorted(STATUSES), "unfinished")
#: how many executions a "nothing to recover" message names
HINT_COUNT = 5
#: how many executions are read for close matches of a mistyped id
MATCH_SCAN = 500


def check_execution_id(execution_id: Any, backend: Any, graph_id: str) -> str:
    """``execution_id`` if it is a name this store can hold (see the module docstring), else ``ConfigError``."""
    if not isinstance(execution_id, str):
        raise ConfigError(f"execution_id must be a string such as 'order-42', got {type(execution_id).__name__}")
    if not execution_id:
        raise ConfigError("execution_id must not be empty; name the run (e.g. 'order-42'), or leave it out for a generated id")
    size = len(execution_id.encode("utf-8", "surrogatepass"))
    if size > MAX_EXECUTION_ID_BYTES:
        raise ConfigError(
            f"execution_id {execution_id[:30]!r}... is {size} bytes long in UTF-8; at most {MAX_EXECUTION_ID_BYTES} "
            "are allowed. Use a shorter name (a hash of a long key, for instance)"
        )
    if unicodedata.normalize("NFC", execution_id) != execution_id:
        raise ConfigError(
            f"execution_id {execution_id!r} is not in Unicode normal form C, so the same name typed again "
            "could be another id; pass unicodedata.normalize('NFC', name)"
        )
    bad = sorted({c for c in execution_id if not (c.isalnum() or c in ID_PUNCTUATION)})
    if bad:
        shown = ", ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad[:5])
        raise ConfigError(
            f"execution_id {execution_id!r} holds {shown}: an execution id is made of letters, digits and "
            f"{' '.join(ID_PUNCTUATION)} only (stores key and escape it alike); replace the other characters"
        )
    last = 2**31 - 1  # the highest seq a store must hold: the longest checkpoint id this execution gets
    probe = CheckpointHeader(canonical_checkpoint_id(execution_id, last), graph_id, execution_id, last, time.time())
    try:
        backend.check_header(probe)
    except BackendError as exc:
        raise ConfigError(f"execution_id {execution_id!r} cannot be stored in {backend.describe()}: {exc}") from None
    return execution_id


def refuse_existing(head: CheckpointHeader, graph_id: str, *, resume: bool) -> None:
    """``ExecutionExistsError`` for starting a run named as the stored execution ``head``; returns
    when ``resume`` may continue it (an unfinished execution of this graph)."""
    eid = head.execution_id
    if head.graph_id != graph_id or head.kind != "graph":
        owner = f"graph {head.graph_id!r}" if head.kind == "graph" else f"{head.kind} {head.graph_id!r}"
        raise ExecutionExistsError(
            f"execution id {eid!r} is already used by {owner} ({head.status}) in this store; execution ids are "
            f"unique in a store, across graph ids. Choose another id (e.g. prefix it with {graph_id!r})"
        )
    if head.status == COMPLETED:
        if resume:
            return
        raise ExecutionExistsError(
            f"execution {eid!r} of graph {graph_id!r} has already completed; it is not run again. Choose another "
            f"id for a new run; `await graph.recover_and_continue(execution_id={eid!r})` returns its stored result"
        )
    if not resume:
        raise ExecutionExistsError(
            f"execution {eid!r} of graph {graph_id!r} already exists and has not finished ({head.status}). To "
            f"continue it: `await graph.recover_and_continue(execution_id={eid!r})` or run(..., "
            f"execution_id={eid!r}, resume=True); for a new run choose another id"
        )


# -- listing -------------------------------------------------------------------------------------------
@attrs.frozen
class ExecutionSummary:
    """One execution as ``list_executions`` lists it (times: seconds since the epoch)."""

    execution_id: str
    graph_id: str
    status: str
    kind: str
    #: when its oldest stored checkpoint was written (None if none is left)
    started_at: float | None
    #: when its newest checkpoint was written
    updated_at: float
    #: how many of its checkpoints are stored
    checkpoints: int
    last_seq: int
    last_checkpoint: str

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def check_status(status: Any) -> str | None:
    if status is not None and status not in STATUS_FILTERS:
        raise ConfigError(f"unknown execution status {status!r}; use one of {', '.join(STATUS_FILTERS)} (or None: all)")
    return status


def list_executions(backend: Any, *, graph_id: str | None = None, status: str | None = None,
                    limit: int | None = None, kind: str | None = None) -> list[ExecutionSummary]:
    """Summaries of the executions in ``backend`` (of ``graph_id``, of ``kind``, with ``status``), newest
    first, at most ``limit``; each one's checkpoints are listed once (their count and first time)."""
    check_status(status)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")
    exact = status is None or status == "unfinished"
    heads = backend.executions(graph_id=graph_id, unfinished_only=status == "unfinished",
                               limit=limit if exact and kind is None else None)
    wanted = [h for h in heads if (kind is None or h.kind == kind)
              and (status in (None, "unfinished") or h.status == status)]
    return [_summary(backend, head) for head in wanted[:limit]]


def _summary(backend: Any, head: CheckpointHeader) -> ExecutionSummary:
    stored = backend.list(execution_id=head.execution_id)
    return ExecutionSummary(
        execution_id=head.execution_id, graph_id=head.graph_id, status=head.status, kind=head.kind,
        started_at=min((h.created_at for h in stored), default=None), updated_at=head.created_at,
        checkpoints=len(stored), last_seq=head.seq, last_checkpoint=head.checkpoint_id,
    )


# -- "nothing to recover": what does exist -------------------------------------------------------------
def what_exists(backend: Any, *, graph_id: str, execution_id: str | None = None) -> str:
    """A sentence or two for a "nothing to recover" message: the unfinished executions the store holds
    (this graph's first), and graph ids or execution ids close to the ones asked for."""
    try:
        heads = [h for h in backend.executions(limit=MATCH_SCAN)]
    except Exception:  # a hint must never hide the error it explains
        return ""
    parts: list[str] = []
    if execution_id is not None:
        close = difflib.get_close_matches(execution_id, [h.execution_id for h in heads], n=3, cutoff=0.6)
        if close:
            parts.append(f"close execution ids: {', '.join(map(repr, close))}")
    unfinished = sorted((h for h in heads if h.unfinished), key=lambda h: h.graph_id != graph_id)
    if unfinished:
        shown = ", ".join(f"{h.execution_id!r} ({h.kind} {h.graph_id!r}, {h.status})" for h in unfinished[:HINT_COUNT])
        more = f" and {len(unfinished) - HINT_COUNT} more" if len(unfinished) > HINT_COUNT else ""
        parts.append(f"unfinished executions in this store: {shown}{more}")
    else:
        parts.append("this store holds no unfinished execution")
    graph_ids = sorted({h.graph_id for h in heads if h.graph_id != graph_id})
    close_graphs = difflib.get_close_matches(graph_id, graph_ids, n=3, cutoff=0.6)
    if close_graphs:
        parts.append(f"graph ids close to {graph_id!r}: {', '.join(map(repr, close_graphs))} "
                     "(pass graph_id= to checkpointed() if the graph was renamed)")
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}. List them with `spark-ckpt list --executions` or `await graph.list_executions()`"
