"""Plain records that describe checkpoints. No I/O and no Spark import here.

A *checkpoint* is one ``GraphCheckpoint`` (or an agent snapshot) turned into bytes by the codec.
Backends only ever see those bytes plus a ``CheckpointHeader``: the small clear-text index they
need to list, order and prune checkpoints.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs

from .guide_views import GRAPH_CHECKPOINT_FIELDS, HEADER_FIELDS, DictView

#: Version of the checkpoint *content* layout (``GraphCheckpoint``). The codec envelope has its own.
#: 2: a checkpoint may hold only the graph and node state that changed (``partial_state``).
#: 3: such a checkpoint leaves ``run_input`` to the whole one it builds on (it never changes).
#: 4: a visit names the visit whose output it consumed (``Visit.input_from``), pending inputs name
#:    theirs (``NodeSnapshot.pending_from``); records built on a boundary name it (``base_seq``);
#:    skips keep their outputs (``skip_outputs``); a record with the whole state stands alone.
#: 5: a visit keeps the events it published on the graph's event bus (``Visit.events``), re-published
#:    when it replays; a run input may be a Spark Task (``{"kind": "task"}``).
#: 6: a value JSON cannot hold is stored tagged (``codec.values``: a tuple, a datetime, an allowed
#:    dataclass ...); an older reader would take the tags for plain dicts, so it must refuse the record.
CONTENT_VERSION = 6

# Status of an execution as of a given checkpoint. The newest checkpoint of an execution decides.
RUNNING = "running"
FAILED = "failed"
COMPLETED = "completed"
#: stopped at an approval gate (Spark's ``ApprovalPendingError``): unfinished, continued once resolved
WAITING = "waiting"
UNFINISHED_STATUSES = frozenset({RUNNING, FAILED, WAITING})
STATUSES = frozenset({RUNNING, FAILED, COMPLETED, WAITING})

GRAPH = "graph"
AGENT = "agent"


class AwaitableValue:
    """``await value`` gives the value itself: what ``Backend.get_checkpoint()`` returns is used with
    or without ``await`` (the guide awaits the backend's methods)."""

    __slots__ = ()

    def __await__(self):  # (a generator that finishes at once, with the value)
        return self
        yield  # (unreachable: makes this a generator)


def new_id(prefix: str = "") -> str:
    """A random id with a millisecond time prefix, so ids sort roughly by creation time.

    ``os.urandom`` rather than ``uuid4``: ids are minted on the hot path, and this is ~10x cheaper.
    """
    return f"{prefix}{int(time.time() * 1000):011x}{os.urandom(8).hex()}"


def canonical_checkpoint_id(execution_id: str, seq: int) -> str:
    """The id of the ``seq``-th checkpoint of a graph execution: ``ck-<execution_id>-<seq>``.

    Derived, not drawn, so a store can find the row by ``(execution_id, seq)`` and needs no separate
    index on the id (``canonical_key`` is the inverse)."""
    return f"ck-{execution_id}-{seq}"


def canonical_key(checkpoint_id: str) -> tuple[str, int] | None:
    """``(execution_id, seq)`` if ``checkpoint_id`` has the derived shape ``ck-<execution>-<seq>``."""
    if not checkpoint_id.startswith("ck-"):
        return None
    execution_id, dash, seq = checkpoint_id[3:].rpartition("-")
    if not dash or not execution_id or not (seq.isascii() and seq.isdigit()) or str(int(seq)) != seq:
        return None
    return execution_id, int(seq)


@attrs.frozen
class CheckpointHeader(DictView):
    """What a backend may index in the clear: ids, order, time, size, status. Nothing sensitive.

    Also reads as a dict (``header["timestamp"]``: ISO text; see ``guide_views``)."""

    _view_fields = HEADER_FIELDS

    checkpoint_id: str
    graph_id: str
    execution_id: str
    seq: int
    created_at: float
    status: str = RUNNING
    kind: str = GRAPH
    size: int = 0
    #: with encryption on, a MAC over (graph, execution, seq, status) under a subkey, written by the
    #: adapter; a backend keeps it only in its executions index (``Backend.execution_head``), so a
    #: store holder cannot lower an execution's head without the key. Not part of equality.
    tag: bytes | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED_STATUSES


class BlobParts:
    """A checkpoint's bytes given in consecutive parts (the envelope's prefix, then a large payload), to
    a backend that writes them one after the other (``Backend.takes_blob_parts``) instead of copying
    them into one buffer first. ``len()`` is the byte count; ``join()`` the bytes.

    A part may be a ``ValuePart`` (only for a backend that ``takes_values``): a large value the backend
    stores once by its digest, however many checkpoints hold it."""

    __slots__ = ("parts", "_size", "has_values")

    def __init__(self, parts: tuple["bytes | ValuePart", ...]) -> None:
        self.parts = parts
        self._size = sum(len(part) for part in parts)
        self.has_values = any(type(part) is ValuePart for part in parts)

    def __len__(self) -> int:
        return self._size

    def without_values(self) -> "BlobParts":
        """The parts without the ``ValuePart`` ones: what a backend that takes values keeps in the row."""
        return BlobParts(tuple(part for part in self.parts if type(part) is bytes))

    def join(self) -> bytes:
        if self.has_values:
            return b"".join(part.data() if type(part) is ValuePart else part for part in self.parts)
        return b"".join(self.parts)


class ValuePart:
    """A large value's JSON inside a checkpoint's bytes, stored apart by its ``digest`` (SHA-256, hex).

    ``source`` is the JSON itself, or an immutable value (``str``) whose JSON is made again when the
    bytes are needed (a backend that does not hold that digest yet): keeping both would hold a large
    value twice. Its digest, CRC-32 and size are measured once (``measure``); ``encode`` is how the
    source becomes its JSON (``codec.convert.dumps_data``)."""

    __slots__ = ("source", "encode", "digest", "crc", "size")

    def __init__(self, source: "bytes | str", encode: Any) -> None:
        self.source = source
        self.encode = encode
        self.digest: str = ""
        self.crc = 0
        self.size = -1

    def data(self) -> bytes:
        source = self.source
        return source if type(source) is bytes else self.encode(source)

    def measure(self) -> "ValuePart":
        if self.size < 0:
            import hashlib
            import zlib

            data = self.data()
            self.digest, self.crc, self.size = hashlib.sha256(data).hexdigest(), zlib.crc32(data), len(data)
        return self

    def __len__(self) -> int:
        return self.measure().size


@attrs.frozen
class StoredCheckpoint:
    """A header plus the opaque encoded bytes, as a backend returns it."""

    header: CheckpointHeader
    blob: bytes


@attrs.frozen
class Lease:
    """Ownership of one execution by one worker; ``token`` is the fencing token (grows on takeover)."""

    execution_id: str
    owner: str
    token: int
    expires_at: float


@attrs.frozen
class GraphMetadata:
    graph_id: str
    graph_version: str
    execution_id: str


@attrs.frozen
class Visit:
    """One completed (or skipped) node visit, as journaled for replay.

    ``index`` counts visits of ``node_key`` within the execution (0-based); together they are the
    replay key. ``output`` is the node's ``NodeMessage`` dumped to JSON-able data. ``input_from`` is
    the ``[node_key, index]`` of the visit whose output this visit consumed (None: the run's input,
    or not known), so a replay feeds it the same input whatever order siblings delivered in.
    """

    node_key: str
    index: int
    superstep: int
    output: Any = None
    status: str = "completed"  # completed | skipped
    started_at: float = 0.0
    duration_s: float = 0.0
    input_from: Any = None
    #: the events the visit published, in order: ``{"topic", "payload", "message", "metadata"}``
    #: (``payload`` dumped; ``message``: it was a NodeMessage)
    events: list[Any] | None = None


@attrs.frozen
class NodeSnapshot:
    """The parts of a Spark node's ``_state`` worth keeping (never its recursive context_snapshot)."""

    process_count: int = 0
    processing: bool = False
    pending_inputs: list[Any] = attrs.field(factory=list)
    outputs: Any = None
    custom: dict[str, Any] = attrs.field(factory=dict)
    #: per pending input, the ``[node_key, index]`` of the visit that delivered it (None: not known)
    pending_from: list[Any] = attrs.field(factory=list)


@attrs.frozen
class FailureInfo:
    """The visit that was running when the execution failed, with its input."""

    node_key: str
    index: int
    error_type: str
    error: str
    input: Any = None


@attrs.frozen
class GraphCheckpoint(DictView, AwaitableValue):
    """Everything needed to continue one execution of one graph (the guide's checkpoint shape).

    Also reads as the guide's dict: ``checkpoint["graph_state"]``, ``checkpoint.get("current_node")``,
    ``checkpoint.to_dict()`` (``guide_views``: ``version`` "6.0", ISO ``timestamp``, and more)."""

    _view_fields = GRAPH_CHECKPOINT_FIELDS

    checkpoint_id: str
    seq: int
    timestamp: float
    graph_metadata: GraphMetadata
    status: str = RUNNING
    superstep: int = 0
    run_input: Any = None
    graph_state: dict[str, Any] = attrs.field(factory=dict)
    node_states: dict[str, NodeSnapshot] = attrs.field(factory=dict)
    #: True: ``graph_state`` and ``node_states`` hold only the keys and nodes that changed since the
    #: execution's previous checkpoint, and ``removed_state`` the graph state keys deleted since then
    #: (a checkpoint costs what changed, not the size of the state); the adapter reads earlier
    #: checkpoints, back to one with the whole state, to give callers the whole state. From content
    #: version 3 such a checkpoint holds no ``run_input`` either: the whole one has it.
    partial_state: bool = False
    removed_state: list[str] = attrs.field(factory=list)
    #: with ``partial_state``: graph state keys whose list only gained items at its end since the
    #: previous checkpoint, with those items (a growing list stores each item once)
    appended_state: dict[str, list[Any]] = attrs.field(factory=dict)
    current_node: str | None = None
    #: visits ``history_start`` .. ``history_start + len(execution_history)`` of the execution's journal.
    #: Checkpoints store only the visits since the previous one (linear, not quadratic, storage); the
    #: adapter reads earlier checkpoints to give callers the whole history (``history_start == 0``).
    execution_history: list[Visit] = attrs.field(factory=list)
    history_start: int = 0
    skip_nodes: list[str] = attrs.field(factory=list)
    #: outputs given to ``skip_node(node, output=...)``, by node key (dumped messages)
    skip_outputs: dict[str, Any] = attrs.field(factory=dict)
    failure: FailureInfo | None = None
    result: Any = None
    # Journals of visits that were still running when this checkpoint was written (e.g. an agent's
    # completed LLM/tool calls), keyed by node key: {"visit_index": int, "data": adapter data}.
    inflight: dict[str, Any] = attrs.field(factory=dict)
    # Per-node extra state contributed by adapters (e.g. an agent node's full snapshot), keyed by node key.
    node_extras: dict[str, Any] = attrs.field(factory=dict)
    # Free-form data contributed by plugins (``spark_ckpt_checkpoint_extras``).
    extras: dict[str, Any] = attrs.field(factory=dict)
    #: set on a record built on the last boundary record (in-flight journals, a failure): the seq of
    #: that boundary. Its state and journal are that boundary's, whatever was written after it.
    base_seq: int | None = None
    version: int = CONTENT_VERSION
    kind: str = GRAPH

    @property
    def graph_id(self) -> str:
        return self.graph_metadata.graph_id

    @property
    def execution_id(self) -> str:
        return self.graph_metadata.execution_id

    @property
    def id(self) -> str:  # the guide uses ``checkpoint.id``
        return self.checkpoint_id

    def header(self, size: int = 0) -> CheckpointHeader:
        return CheckpointHeader(
            checkpoint_id=self.checkpoint_id,
            graph_id=self.graph_id,
            execution_id=self.execution_id,
            seq=self.seq,
            created_at=self.timestamp,
            status=self.status,
            kind=self.kind,
            size=size,
        )


# --- agents ---------------------------------------------------------------------------------------
#: Version of the agent snapshot layout (``CheckpointedAgent.checkpoint()``).
#: 2: the agent's own state keys, tool results and traces are kept exactly (tagged where JSON cannot hold them)
AGENT_SNAPSHOT_VERSION = 2

LLM_CALL = "llm"
TOOL_CALL = "tool"
#: written before a tool marked not safe to re-run starts, so a crash inside it is detected
TOOL_STARTED = "tool_started"


@attrs.frozen
class AgentCall:
    """One completed LLM or tool call of an agent run, journaled before the agent acts on it.

    LLM calls are replayed in order (``index`` counts them within the run); a tool call is matched by
    ``(after_llm, tool_use_id, tool_name)``: the LLM call that requested it and its id, so parallel
    tool execution may complete in any order.
    """

    kind: str  # LLM_CALL | TOOL_CALL | TOOL_STARTED
    index: int
    method: str = ""  # get_text | get_json | tool
    response: Any = None  # LLM: the model's response, as JSON-able data
    usage: dict[str, Any] | None = None
    model_id: str | None = None
    messages_digest: str | None = None  # what the agent sent: replay refuses a diverging conversation
    after_llm: int = -1
    tool_name: str | None = None
    tool_use_id: str | None = None
    tool_args: Any = None
    tool_result: Any = None  # JSON-able form of what the tool returned
    tool_block: Any = None  # the toolResult block the agent sends to the model
    tool_trace: Any = None  # Spark's ToolTrace for this call
    started_at: float = 0.0
    duration_s: float = 0.0


@attrs.frozen
class AgentRecord(AwaitableValue):
    """One stored record of a checkpointed agent (``CheckpointHeader.kind == "agent"``).

    ``graph_id`` in the header is the agent id; one ``run()`` is one execution. Agent state is stored
    as a chain: a record holds either a full snapshot (``state_full``), a delta against the state of
    ``prev_state_id`` (``state_delta``), or neither (its state is the one of ``prev_state_id``), so a
    long conversation stores each message once.
    """

    checkpoint_id: str
    agent_id: str
    execution_id: str
    seq: int
    timestamp: float
    event: str  # run_started | call | run_finished | saved
    status: str = RUNNING
    prev_state_id: str | None = None
    state_full: dict[str, Any] | None = None
    state_delta: list[Any] | None = None
    run_input: Any = None
    calls: list[AgentCall] = attrs.field(factory=list)
    error: str | None = None
    version: int = AGENT_SNAPSHOT_VERSION
    kind: str = AGENT

    @property
    def has_state(self) -> bool:
        return self.state_full is not None or self.state_delta is not None

    def header(self, size: int = 0) -> CheckpointHeader:
        return CheckpointHeader(
            checkpoint_id=self.checkpoint_id,
            graph_id=self.agent_id,
            execution_id=self.execution_id,
            seq=self.seq,
            created_at=self.timestamp,
            status=self.status,
            kind=AGENT,
            size=size,
        )
