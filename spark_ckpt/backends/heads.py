"""The executions index: per execution, the header of the highest seq ever stored (its *head*).

A backend keeps the head next to the checkpoints and advances it in the same write as the put
(``advance``). Deleting checkpoints never moves it back, so the index is the authority for an
execution's status and newest seq: a completed execution is never run again, and recovery refuses
when the newest checkpoints behind the head are gone (deleted by hand, or a partial restore)
instead of running their work again. See ``Backend.execution_head``.
"""

from __future__ import annotations

from ..errors import DuplicateCheckpointError, ExecutionCompletedError
from ..model import COMPLETED, CheckpointHeader


def advance(head: CheckpointHeader | None, header: CheckpointHeader, *, leased: bool) -> bool:
    """Whether ``header`` becomes the execution's head; raises for a leased write the head forbids.

    A write under a lease (a worker running the execution) must come after the head, into an
    execution that has not completed: a stalled worker can neither add to a finished execution nor
    write into the gaps retention left. Writes without a lease (copies between stores, restore
    points) only move the head forward.
    """
    if head is None:
        return True
    if leased:
        if head.status == COMPLETED:
            raise ExecutionCompletedError(
                f"write to execution {header.execution_id} refused: it already completed (seq {head.seq}); "
                "another worker finished it. This worker must stop"
            )
        if header.seq <= head.seq:
            raise DuplicateCheckpointError(
                f"checkpoint seq {header.seq} of execution {header.execution_id} is not after its newest "
                f"stored seq {head.seq}; not written"
            )
    return header.seq > head.seq


def newest(head: CheckpointHeader | None, stored: CheckpointHeader | None) -> CheckpointHeader | None:
    """The later of an index head and the newest stored header (a store whose index is written after
    the checkpoint may lag by one write; it never leads)."""
    if head is None:
        return stored
    if stored is None or stored.seq <= head.seq:
        return head
    return stored
