"""The event records hooks receive. Plain attrs classes, so new fields never break a plugin."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class NodeEvent:
    """A node visit: fired before (``output`` None) and after the visit."""

    graph_id: str
    execution_id: str
    node_key: str
    visit_index: int
    superstep: int
    node: Any  # the Spark node instance
    input: Any  # the NodeMessage the node receives
    output: Any = None  # the NodeMessage it produced (post_node only)
    replayed: bool = False  # True when the output came from the journal, not from process()
    duration_s: float = 0.0


@attrs.frozen
class FailureEvent:
    """A node or agent failed (including an agent's swallowed failure turned into an error dict)."""

    graph_id: str
    execution_id: str
    node_key: str | None
    error: BaseException | None
    error_type: str
    message: str
    node: Any = None
    input: Any = None
    agent_id: str | None = None


@attrs.frozen
class AgentCallEvent:
    """One LLM call of an agent. ``response``/``usage`` are set on the post hook only."""

    agent_id: str
    execution_id: str
    call_index: int
    method: str  # "get_text" | "get_json" | "tool"
    messages: Any = None
    response: Any = None
    tool_calls: Any = None
    usage: dict[str, Any] | None = None
    model_id: str | None = None
    replayed: bool = False
    tool_name: str | None = None
    tool_args: Any = None


@attrs.frozen
class CheckpointDecision:
    """Asked at every checkpoint opportunity; ``reason`` is "superstep", "explicit" or "final"."""

    graph_id: str
    execution_id: str
    reason: str
    superstep: int
    supersteps_since_last: int
    seconds_since_last: float
    strategy: str
    interval: float


@attrs.frozen
class CheckpointSaved:
    """A checkpoint was committed to the backend: ``duration_s`` is the time its write took (encoding
    plus the store's put, ``time.perf_counter``), ``size`` the bytes stored (``header.size``)."""

    header: Any  # CheckpointHeader
    backend: str
    duration_s: float = 0.0
    size: int = 0


@attrs.frozen
class RunEvent:
    """One run of an execution (a first run, a recovery or a fork) starting or ending in this process.

    ``recovery`` is the ``RecoveryReport`` when the run continues stored work (its ``replayed`` and
    ``live`` visits are complete on the ended event), ``fork_of`` the checkpoint id a fork starts from.
    On the ended event ``status`` is "completed", "failed" or "waiting" (an approval is pending) and
    ``error`` the exception that ended the run, if any."""

    graph_id: str
    execution_id: str
    graph: Any  # the Spark graph
    resumed: bool = False
    recovery: Any = None
    fork_of: str | None = None
    status: str = "running"
    error: BaseException | None = None
