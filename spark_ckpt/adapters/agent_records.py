"""A standalone agent's stored records: its state as a chain of full snapshots and deltas, and the
per-call records of a run, written as ``CheckpointConfig.durability`` says.

What is stored for agent ``agent_id`` (``CheckpointHeader.graph_id == agent_id``, ``kind == "agent"``):
``run_started`` (seq 0 of an execution: the run input, and the state if it changed since the last
stored one), one ``call`` record per completed LLM response or tool result, and ``run_finished`` (the
state after the run). States form a chain: a record holds a full snapshot, a delta against the state
of ``prev_state_id``, or neither (its state is that one's).

Invariants:

* the chain's head (the newest state stored) moves only once a record's put succeeded: a later delta
  never refers to a record whose write failed;
* a full snapshot is written whenever the deltas since the last one outweigh it
  (``FULL_SNAPSHOT_RATIO``), and before a chain outgrows the retention count;
* a record repeats nothing its header already says (``_compact``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ..codec import Identity, from_data, to_data
from ..codec.convert import dumps_data
from ..codec.values import identical
from ..engine import deltas
from ..engine.chain import DELTA, DeltaChains
from ..engine.damage import damaged
from ..engine.durability import DurableWriter
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..model import AGENT, COMPLETED, RUNNING, AgentRecord, CheckpointHeader, new_id
from .agent_snapshot import jsonable, node_message_from_data, take_snapshot

if TYPE_CHECKING:
    from .agent import CheckpointedAgent

#: write a full snapshot once the deltas since the last one add up to this many times its size
FULL_SNAPSHOT_RATIO = 4


class AgentRecords:
    """The stored records of one checkpointed agent (see the module docstring)."""

    def __init__(self, owner: CheckpointedAgent) -> None:
        self.owner = owner
        # newest stored state record that outlives its run: (checkpoint_id, snapshot without timestamp)
        self.head: tuple[str, dict[str, Any]] | None = None
        #: states of records on their way to the store: each becomes the head once stored
        self.unstored_heads: dict[str, dict[str, Any]] = {}
        self.bytes_since_full = 0
        self.chain_length = 0  # delta records since the last full snapshot
        # "async" writes the call journal while the agent goes on, "exit" keeps it in memory until the
        # run ends (or fails); every record is kept (they are deltas)
        self.writes = DurableWriter(owner.config.durability)

    def comparable_snapshot(self) -> dict[str, Any]:
        snapshot = take_snapshot(self.owner.agent, self.owner.agent_id)
        snapshot.pop("timestamp", None)
        return snapshot

    def state_record(
        self, execution_id: str, seq: int, event: str, status: str, *, advance_head: bool,
        snapshot: dict[str, Any] | None = None,
    ) -> AgentRecord | None:
        """A record holding the current state (full or as a delta), or None if unchanged."""
        snapshot = snapshot if snapshot is not None else self.comparable_snapshot()
        record_id = new_id("as")
        base = dict(checkpoint_id=record_id, agent_id=self.owner.agent_id, execution_id=execution_id, seq=seq,
                    timestamp=time.time(), event=event, status=status)
        if self.head is None:
            record = AgentRecord(**base, state_full=snapshot)
            self.bytes_since_full = 0
            self.chain_length = 0
        else:
            head_id, head_state = self.head
            if identical(head_state, snapshot):
                return None
            ops = deltas.diff(head_state, snapshot)
            delta_size = len(dumps_data(ops))
            full_size = len(dumps_data(snapshot))
            # keep chains shorter than the retention count, or retention could never delete anything
            keep = self.owner.config.retention_count
            if (self.bytes_since_full + delta_size >= FULL_SNAPSHOT_RATIO * full_size
                    or (keep is not None and self.chain_length + 1 >= keep)):
                record = AgentRecord(**base, state_full=snapshot)
                self.bytes_since_full = 0
                self.chain_length = 0
            else:
                record = AgentRecord(**base, prev_state_id=head_id, state_delta=ops)
                self.bytes_since_full += delta_size
                self.chain_length += 1
        if advance_head:
            self.unstored_heads[record_id] = snapshot
        return record

    def bare_record(self, execution_id: str, seq: int, event: str, status: str) -> AgentRecord:
        return AgentRecord(
            checkpoint_id=new_id("as"), agent_id=self.owner.agent_id, execution_id=execution_id, seq=seq,
            timestamp=time.time(), event=event, status=status,
            prev_state_id=self.head[0] if self.head else None,
        )

    def set_head(self, record_id: str, snapshot: dict[str, Any]) -> None:
        snapshot = dict(snapshot)
        snapshot.pop("timestamp", None)
        self.head = (record_id, snapshot)

    def state_holder(self, record: AgentRecord) -> str:
        return record.checkpoint_id if record.has_state else (record.prev_state_id or record.checkpoint_id)

    def resolve_state(self, record: AgentRecord) -> dict[str, Any] | None:
        """The agent state a record stands for: its delta links followed back to a full snapshot, by
        the same delta mechanism that makes a graph record's adapter states whole (``chain``); content of
        the wrong shape on the way is a ``CorruptCheckpointError`` naming ``record``."""
        with damaged(f"agent checkpoint {record.checkpoint_id}"):
            return self._resolve_state(record)

    def _resolve_state(self, record: AgentRecord) -> dict[str, Any] | None:
        state = DeltaChains(_state_entry(record), wanted=["state"])
        current, seen = record, set()
        while state.missing:
            if current.checkpoint_id in seen:
                raise CorruptCheckpointError(f"agent state chain of {self.owner.agent_id!r} loops at {current.checkpoint_id}")
            seen.add(current.checkpoint_id)
            if current.prev_state_id is None:
                if state.ops:
                    raise CorruptCheckpointError(
                        f"agent state delta {current.checkpoint_id} of {self.owner.agent_id!r} has no base checkpoint"
                    )
                return None
            try:
                current = self.load_id(current.prev_state_id)
            except CheckpointNotFoundError:
                raise CorruptCheckpointError(
                    f"agent {self.owner.agent_id!r}: state checkpoint {current.prev_state_id} that later ones are "
                    "deltas of was deleted (pruned outside CheckpointedAgent.prune?); the newest full state "
                    "cannot be rebuilt. Restore from a file saved with save_checkpoint, or start afresh"
                ) from None
            state.feed(_state_entry(current))
        return with_timestamp(dict(state.whole["state"]), record.timestamp)

    def needed_ids(self) -> set[str]:
        """Records recovery or the newest state still needs."""
        needed: set[str] = set()
        for latest in self.owner.backend.executions(graph_id=self.owner.agent_id, unfinished_only=True):
            needed.update(h.checkpoint_id for h in self.owner.backend.list(execution_id=latest.execution_id))
        heads = []
        for header in self.owner.backend.list(graph_id=self.owner.agent_id):
            if header.status == COMPLETED:
                heads.append(header)
                break
        for h in self.owner.backend.list(graph_id=self.owner.agent_id):
            if h.checkpoint_id in needed and h.seq == 0:
                heads.append(h)
        for header in heads:
            record: AgentRecord | None = self.load(header)
            while record is not None:
                needed.add(record.checkpoint_id)
                if record.state_full is not None or record.prev_state_id is None:
                    break
                try:
                    record = self.load_id(record.prev_state_id)
                except CheckpointNotFoundError:
                    break
        return needed

    def load(self, header: CheckpointHeader) -> AgentRecord:
        stored = self.owner.backend.get(header.checkpoint_id)
        return self.decode(stored)

    def load_id(self, checkpoint_id: str) -> AgentRecord:
        return self.decode(self.owner.backend.get(checkpoint_id))

    def decode(self, stored: Any) -> AgentRecord:
        h = stored.header
        if h.kind != AGENT:
            raise CorruptCheckpointError(f"checkpoint {h.checkpoint_id} is a {h.kind} checkpoint, not an agent's")
        data, _ = self.owner.codec.decode_data(stored.blob, Identity(h.graph_id, h.execution_id, h.seq))
        if not isinstance(data, dict):
            raise CorruptCheckpointError(f"agent checkpoint {h.checkpoint_id} does not hold an agent record")
        # what the header already says is not repeated in the payload
        data.update(checkpoint_id=h.checkpoint_id, agent_id=h.graph_id, execution_id=h.execution_id,
                    seq=h.seq, timestamp=h.created_at, status=h.status)
        return from_data(data, AgentRecord)

    async def put(self, record: AgentRecord, lease: Any, *, wait: bool = False) -> None:
        """Store ``record`` as ``config.durability`` says: "sync" before returning; "async" in a task
        the next write awaits; "exit" at the end of the run. ``wait``: now, after everything before it
        (the records that end a run, explicit saves)."""
        data = _compact(to_data(record))
        blob = self.owner.codec.encode_data(data, Identity(self.owner.agent_id, record.execution_id, record.seq))
        header = record.header(len(blob))
        if self.owner.codec.index_tags.enabled:
            header = attrs.evolve(header, tag=self.owner.codec.index_tags.tag(header))
        state = self.unstored_heads.pop(record.checkpoint_id, None)

        async def put() -> None:
            await self.owner.backend.aput(header, blob, lease=lease)
            if state is not None:  # only now may later records build on it
                self.set_head(record.checkpoint_id, state)

        await self.writes.write(put, wait=wait)

    async def flush(self) -> None:
        """Write what the "async" and "exit" durability modes still hold, in order."""
        await self.writes.flush()


# -- helpers ------------------------------------------------------------------------------------------
def _state_entry(record: AgentRecord) -> dict[str, Any]:
    """A record's state as a ``DeltaChains`` section: whole, as a delta, or absent (its base's)."""
    if record.state_full is not None:
        return {"state": record.state_full}
    if record.state_delta is not None:
        return {"state": {DELTA: record.state_delta}}
    return {}

_RECORD_DEFAULTS = {
    "status": RUNNING, "prev_state_id": None, "state_full": None, "state_delta": None, "run_input": None,
    "calls": [], "error": None,
}
_CALL_DEFAULTS = {
    "method": "", "response": None, "usage": None, "model_id": None, "messages_digest": None, "after_llm": -1,
    "tool_name": None, "tool_use_id": None, "tool_args": None, "tool_result": None, "tool_block": None,
    "tool_trace": None, "started_at": 0.0, "duration_s": 0.0,
}


_IN_HEADER = frozenset({"checkpoint_id", "agent_id", "execution_id", "seq", "timestamp", "status", "kind"})


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Drop fields at their default or already in the header: one record per call (or per turn) must
    stay small next to what it holds."""
    out = {k: v for k, v in data.items()
           if k not in _IN_HEADER and (k not in _RECORD_DEFAULTS or v != _RECORD_DEFAULTS[k])}
    if "calls" in out:
        out["calls"] = [{k: v for k, v in c.items() if k not in _CALL_DEFAULTS or v != _CALL_DEFAULTS[k]}
                        for c in out["calls"]]
    return out


def evolve(record: AgentRecord, **changes: Any) -> AgentRecord:
    import attrs

    return attrs.evolve(record, **changes)


def with_timestamp(snapshot: dict[str, Any], when: float | None = None) -> dict[str, Any]:
    out = dict(snapshot)
    out["timestamp"] = when if when is not None else time.time()
    return out


def input_data(inputs: Any) -> Any:
    from spark.nodes.types import NodeMessage

    if isinstance(inputs, NodeMessage):
        return {"node_message": jsonable(inputs)}
    return {"value": jsonable(inputs)}


def input_from_data(data: Any) -> Any:
    if isinstance(data, dict) and "node_message" in data:
        return node_message_from_data(data["node_message"])
    if isinstance(data, dict):
        return data.get("value")
    return data
