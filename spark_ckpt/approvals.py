"""Approval requests of stored executions, listed and resolved without the graph's code (the CLI's
``spark-ckpt approvals`` and ``CheckpointedGraph.list_approvals``/``resolve_approval``).

An execution stopped by Spark's ``ApprovalPendingError`` is stored with status ``waiting``; its newest
record holds the graph state with Spark's approval requests (under the key named in the record's
``extras["approvals"]["state_key"]``, Spark's default ``approval_requests``), each as Spark's
``ApprovalRequest.model_dump()``. Resolving one changes the stored execution, as Spark's
``ApprovalGateManager.resolve_request`` changes graph state: status, ``decided_at``, ``decided_by``,
``notes``; ``recover_and_continue()`` then passes (approved) or fails at (rejected) the gate.

Invariants:

* a resolution is one new record (the next seq) of the execution, written under its lease, which is
  claimed first: a live worker holding it makes the resolution fail with ``LeaseError``. The record is
  the newest one made whole, with only the request changed, and stands alone; status stays ``waiting``;
* anything else is refused with ``ApprovalError`` before anything is written: an unknown id, a request
  already resolved, an execution that is not ``waiting`` (running, failed, completed);
* no Spark import (the CLI stays fast); the request shape is Spark 0.3.2's ``ApprovalRequest``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import attrs

from .backends.leases import worker_identity
from .codec import Codec, to_data
from .engine.records import RecordReader
from .engine.store_path import RecordWriter
from .errors import ApprovalError, LeaseError
from .model import WAITING, CheckpointHeader, GraphCheckpoint, canonical_checkpoint_id

#: ``extras`` key of a waiting record: ``{"state_key": ..., "pending": [approval ids]}``
EXTRAS_KEY = "approvals"
DEFAULT_STATE_KEY = "approval_requests"
#: key in a request's ``metadata`` holding the gate's stable identity (``graph_gates``)
GATE_KEY = "spark_ckpt_gate"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


def state_key(record: GraphCheckpoint) -> str:
    return (record.extras.get(EXTRAS_KEY) or {}).get("state_key") or DEFAULT_STATE_KEY


def requests_of(record: GraphCheckpoint) -> list[dict[str, Any]]:
    """The approval requests a (whole) record's graph state holds, as plain dicts."""
    raw = record.graph_state.get(state_key(record)) or []
    return [dict(item) for item in raw if isinstance(item, dict)]


def status_of(request: dict[str, Any]) -> str:
    status = request.get("status", PENDING)
    return str(getattr(status, "value", status))


def describe(request: dict[str, Any], header: CheckpointHeader) -> dict[str, Any]:
    """One request as the list shows it."""
    gate = (request.get("metadata") or {}).get(GATE_KEY) or {}
    return {
        "approval_id": request.get("approval_id"), "status": status_of(request), "graph": header.graph_id,
        "execution": header.execution_id, "execution_status": header.status, "action": request.get("action"),
        "node": gate.get("node_key"), "visit": gate.get("visit_index"), "reason": request.get("reason"),
        "created_at": request.get("created_at"), "decided_at": request.get("decided_at"),
        "decided_by": request.get("decided_by"), "notes": request.get("notes"),
    }


def _whole_head(reader: RecordReader, head: CheckpointHeader) -> GraphCheckpoint:
    return reader.whole(head)


def list_approvals(backend: Any, codec: Codec, *, graph_id: str | None = None,
                   statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The requests of every waiting execution (of ``graph_id``), newest execution first; only those
    whose status is in ``statuses`` if given."""
    wanted = set(statuses) if statuses is not None else None
    reader = RecordReader(backend, codec)
    found: list[dict[str, Any]] = []
    for head in backend.executions(graph_id=graph_id, unfinished_only=True):
        if head.status != WAITING:
            continue
        for request in requests_of(_whole_head(reader, head)):
            if wanted is None or status_of(request) in wanted:
                found.append(describe(request, head))
    return found


def _locate(backend: Any, reader: RecordReader, approval_id: str, graph_id: str | None
            ) -> tuple[CheckpointHeader, GraphCheckpoint]:
    """The waiting execution holding ``approval_id``; ``ApprovalError`` when none does."""
    heads = backend.executions(graph_id=graph_id)
    for head in sorted(heads, key=lambda h: h.status != WAITING):  # waiting ones first
        if head.kind != "graph":
            continue
        record = _whole_head(reader, head)
        if any(r.get("approval_id") == approval_id for r in requests_of(record)):
            if head.status != WAITING:
                raise ApprovalError(
                    f"approval {approval_id} belongs to execution {head.execution_id}, which is {head.status}, "
                    "not waiting for an approval: nothing was changed"
                )
            return head, record
    where = f" of graph {graph_id!r}" if graph_id else ""
    raise ApprovalError(f"no approval request {approval_id!r} in the executions{where} of {backend.describe()}; "
                        "list them with `spark-ckpt approvals list`")


def resolve_approval(
    backend: Any, codec: Codec, approval_id: str, *, approved: bool, reviewer: str | None = None,
    notes: str | None = None, graph_id: str | None = None, owner: str | None = None, ttl_s: float = 60.0,
) -> dict[str, Any]:
    """Approve or reject ``approval_id`` in its stored execution (see the module docstring); returns
    the resolved request as ``list_approvals`` shows it."""
    reader = RecordReader(backend, codec)
    head, _ = _locate(backend, reader, approval_id, graph_id)
    lease = backend.acquire_lease(head.execution_id, owner or worker_identity(), ttl_s)
    try:
        # read again under the lease: a worker may have moved the execution on meanwhile
        head = backend.execution_head(head.execution_id)
        if head is not None:
            codec.index_tags.check(head)  # with encryption on, an index entry must authenticate
        if head is None or head.status != WAITING:
            raise ApprovalError(f"execution {head.execution_id if head else '?'} is no longer waiting "
                                f"({head.status if head else 'gone'}): nothing was changed")
        record = RecordReader(backend, codec).whole(head)
        key = state_key(record)
        requests = requests_of(record)
        match = [r for r in requests if r.get("approval_id") == approval_id]
        if not match:
            raise ApprovalError(f"approval {approval_id} is no longer in execution {head.execution_id}: "
                                "nothing was changed")
        request = match[0]
        if status_of(request) != PENDING:
            raise ApprovalError(
                f"approval {approval_id} was already {status_of(request)} by {request.get('decided_by') or 'someone'}; "
                "nothing was changed"
            )
        # as ApprovalGateManager.resolve_request does
        request.update(status=APPROVED if approved else REJECTED, decided_at=time.time(), decided_by=reviewer,
                       notes=notes or request.get("notes"))
        data = to_data(record)
        seq = head.seq + 1
        data.update(
            checkpoint_id=canonical_checkpoint_id(head.execution_id, seq), seq=seq, timestamp=time.time(),
            status=WAITING, graph_state={**record.graph_state, key: requests},
        )
        # encoded and indexed (tag included) as every graph record is
        header, blob = RecordWriter(backend, codec, durability="sync", owner=lease.owner, ttl_s=ttl_s).encode(data)
        backend.put(header, blob, lease=lease)
    finally:
        try:
            backend.release_lease(lease)
        except LeaseError:  # pragma: no cover - it expires anyway
            pass
    return describe(request, attrs.evolve(head, seq=head.seq + 1))
