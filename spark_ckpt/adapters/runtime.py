"""What the graph adapter shares with code running inside a node visit (agents, ``checkpoint_now``).

``current_visit()`` returns the ``VisitContext`` of the node visit the caller runs in (a contextvar
set by the graph adapter's ``do`` wrapper, so it propagates into ``process()`` and everything it awaits).

``NodeStateAdapter``s let special nodes (agents) add their own state to graph checkpoints:
the graph adapter calls ``prepare`` once when it wraps the node, ``snapshot`` when it takes a
checkpoint (the result lands in ``GraphCheckpoint.node_extras[node_key]``) and ``restore`` when it
restores one.
"""

from __future__ import annotations

import contextvars
from typing import Any, Awaitable, Callable, Protocol

import attrs


@attrs.define
class VisitContext:
    graph_id: str
    execution_id: str
    node_key: str
    visit_index: int
    superstep: int
    backend: Any  # spark_ckpt.backends.Backend
    codec: Any  # spark_ckpt.codec.Codec
    hooks: Any  # spark_ckpt.plugins.Hooks
    config: Any  # CheckpointConfig
    lease: Any = None  # spark_ckpt.model.Lease | None
    #: set by the graph adapter; ``await request_checkpoint()`` flips it
    checkpoint_requested: bool = False
    #: True while the adapter replays this visit from the journal (process() is not called)
    replaying: bool = False
    #: extra per-visit data adapters may stash (e.g. the agent call journal cursor)
    extras: dict[str, Any] = attrs.field(factory=dict)
    #: on recovery: what ``persist_inflight`` had stored for this very visit before the crash, else None
    recovered_inflight: Any = None
    #: ``await persist_inflight(data)`` durably stores JSON-able ``data`` as this visit's in-flight
    #: journal (a checkpoint of the last superstep boundary plus ``inflight[node_key]``), before returning.
    persist_inflight: Callable[[Any], Awaitable[None]] | None = None


_current_visit: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "spark_ckpt_current_visit", default=None
)


def current_visit() -> VisitContext | None:
    """The visit the caller is running inside, or None outside a checkpointed graph."""
    visit = _current_visit.get()
    if visit is None or isinstance(visit, VisitContext):
        return visit
    return visit.materialize()  # a LazyVisit: most visits never ask, so it is built on first use


class LazyVisit:
    """Stands in the contextvar for a ``VisitContext`` until someone asks for it (saves building
    one per node visit on the hot path). ``build(*args)`` makes it; the result is kept, so every
    caller in the visit sees the same object."""

    __slots__ = ("build", "args", "built")

    def __init__(self, build: Callable[..., VisitContext], *args: Any) -> None:
        self.build = build
        self.args = args
        self.built: VisitContext | None = None

    def materialize(self) -> VisitContext:
        if self.built is None:
            self.built = self.build(*self.args)
        return self.built


class NodeStateAdapter(Protocol):
    def handles(self, node: Any) -> bool: ...

    def prepare(self, node: Any, graph: Any) -> None:
        """Called once when the graph adapter wraps ``node`` (install proxies here)."""

    def snapshot(self, node: Any) -> Any:
        """JSON-able extra state of ``node`` for a graph checkpoint."""

    def restore(self, node: Any, data: Any) -> None:
        """Put ``snapshot``'s data back into a freshly built ``node``."""


_node_state_adapters: list[NodeStateAdapter] = []


def register_node_state_adapter(adapter: NodeStateAdapter) -> None:
    if adapter not in _node_state_adapters:
        _node_state_adapters.append(adapter)


def node_state_adapter_for(node: Any) -> NodeStateAdapter | None:
    for adapter in _node_state_adapters:
        if adapter.handles(node):
            return adapter
    return None
