"""State history: an execution's checkpoints as whole states, newest first, made whole lazily.

Most records hold only what changed since the one before (``chain``), so the state at a checkpoint is
its record plus the earlier ones back to a record holding the whole state. Walking an execution newest
first, each record is decoded once (``decoded``, shared by the whole walk) and the walk back for one
snapshot stops at the nearest whole record (at most ``FULL_HISTORY_EVERY`` boundaries away): listing
the history of n checkpoints decodes n records, not n^2. Nothing is read before the snapshot that
needs it is asked for.

Invariants: a snapshot's values are its own (a deep copy: changing one changes no other snapshot and
no record); a snapshot's journal is read only when asked (``StateSnapshot.checkpoint()``).

No Spark import, no I/O of its own: the caller passes the headers and a loader.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Sequence

import attrs

from ..model import CheckpointHeader, FailureInfo, GraphCheckpoint, NodeSnapshot, Visit
from . import chain

Loader = Callable[[CheckpointHeader], GraphCheckpoint]


@attrs.frozen
class StateSnapshot:
    """The whole state of one execution at one checkpoint (LangGraph's ``StateSnapshot``).

    ``values``: the graph state; ``node_states``: each node's state; ``next``: the nodes with input
    waiting (those the run would visit next; empty once it ended); ``parent_id``: the checkpoint before
    this one in the execution (for an execution's first record: the checkpoint it was forked from, if
    any); ``visits``: the node visits completed since that parent (the journal entries this checkpoint
    added); ``metadata``: the record's extras (``forked_from``, ``state_update`` ...).
    ``checkpoint()`` gives the whole ``GraphCheckpoint`` (with its entire journal), read when called.
    """

    checkpoint_id: str
    graph_id: str
    execution_id: str
    seq: int
    superstep: int
    status: str
    created_at: float
    values: dict[str, Any]
    node_states: dict[str, NodeSnapshot]
    next: tuple[str, ...]
    parent_id: str | None
    visits: list[Visit]
    failure: FailureInfo | None
    metadata: dict[str, Any]
    _whole: Callable[[], GraphCheckpoint] = attrs.field(eq=False, repr=False, alias="whole")

    @property
    def id(self) -> str:
        return self.checkpoint_id

    @property
    def config(self) -> dict[str, Any]:
        """What names this checkpoint (LangGraph's ``config``): pass ``checkpoint_id`` to
        ``continue_from_checkpoint`` or ``update_state``."""
        return {"graph_id": self.graph_id, "execution_id": self.execution_id, "checkpoint_id": self.checkpoint_id}

    def checkpoint(self) -> GraphCheckpoint:
        """The whole record at this checkpoint: its state and its execution's journal up to it."""
        return self._whole()


def history(
    headers: Sequence[CheckpointHeader], load: Loader, *, wanted_extras: Any = (), limit: int | None = None,
    whole: Callable[[GraphCheckpoint], GraphCheckpoint] | None = None,
) -> Iterator[StateSnapshot]:
    """Snapshots of one execution, newest first. ``headers``: its graph records (any order); ``load``
    decodes one (cached by the caller: each record is read once across the walk); ``whole``: makes a
    record whole with its journal (default: through ``chain`` from ``headers``)."""
    ordered = sorted(headers, key=lambda h: h.seq, reverse=True)
    count = len(ordered)

    def before(position: int) -> Iterator[CheckpointHeader]:
        return (ordered[k] for k in range(position + 1, count))

    def complete(record: GraphCheckpoint, position: int) -> GraphCheckpoint:
        if whole is not None:
            return whole(record)
        return chain.make_whole(record, before(position), load, wanted_extras, newest_first=True)

    for position, header in enumerate(ordered):
        if limit is not None and position >= limit:
            return
        record = load(header)
        state = chain.make_whole(record, before(position), load, wanted_extras, newest_first=True, with_history=False)
        parent = ordered[position + 1] if position + 1 < count else None
        yield StateSnapshot(
            checkpoint_id=record.checkpoint_id, graph_id=record.graph_id, execution_id=record.execution_id,
            seq=record.seq, superstep=record.superstep, status=record.status, created_at=record.timestamp,
            values=copy.deepcopy(state.graph_state), node_states=copy.deepcopy(state.node_states),
            next=tuple(record.current_node.split(",")) if record.current_node else (),
            parent_id=parent.checkpoint_id if parent is not None else _forked_from(record),
            visits=_visits_since(record, load(parent) if parent is not None else None),
            failure=record.failure, metadata=copy.deepcopy(record.extras),
            whole=_once(lambda record=record, position=position: complete(record, position)),
        )


def _forked_from(record: GraphCheckpoint) -> str | None:
    source = record.extras.get("forked_from")
    return source if isinstance(source, str) else None


def _visits_since(record: GraphCheckpoint, parent: GraphCheckpoint | None) -> list[Visit]:
    """The visits ``record`` journaled after ``parent`` (its whole journal for the first record)."""
    if record.base_seq is not None:
        return []  # built on a boundary: no visits of its own
    start = 0 if parent is None else chain.journal_end(parent)
    return [visit for offset, visit in enumerate(record.execution_history, record.history_start) if offset >= start]


def _once(make: Callable[[], GraphCheckpoint]) -> Callable[[], GraphCheckpoint]:
    made: list[GraphCheckpoint] = []

    def get() -> GraphCheckpoint:
        if not made:
            made.append(make())
        return made[0]

    return get
