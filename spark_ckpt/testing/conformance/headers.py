"""Test data of the conformance suite: checkpoint headers with readable defaults, at a fixed time.

``make_header(seq)`` gives checkpoint ``<execution_id>-<seq>`` of execution ``exec-1`` in graph
``graph-a``, created at ``T0 + seq``: later seqs are newer unless a test says otherwise, and no test
depends on the clock.
"""

from __future__ import annotations

from ...model import RUNNING, CheckpointHeader

#: A fixed base time keeps ordering tests independent of the clock.
T0 = 1_700_000_000.0


def make_header(
    seq: int = 0,
    *,
    checkpoint_id: str | None = None,
    graph_id: str = "graph-a",
    execution_id: str = "exec-1",
    created_at: float | None = None,
    status: str = RUNNING,
    kind: str = "graph",
    size: int = 0,
) -> CheckpointHeader:
    """A header with readable defaults; ``checkpoint_id`` defaults to ``<execution_id>-<seq>``."""
    return CheckpointHeader(
        checkpoint_id=checkpoint_id if checkpoint_id is not None else f"{execution_id}-{seq}",
        graph_id=graph_id,
        execution_id=execution_id,
        seq=seq,
        created_at=T0 + seq if created_at is None else created_at,
        status=status,
        kind=kind,
        size=size,
    )


def _ids(headers: list[CheckpointHeader]) -> list[str]:
    return [h.checkpoint_id for h in headers]
