"""Events a node publishes on the graph's event bus, journaled with its visit and published again
when the visit replays, so event-driven edges (``node.on_event(topic) >> other``) route on recovery
exactly as in the uninterrupted run.

The bus's ``publish`` is replaced on the bus *instance* (nothing of Spark's changes). A publication
made inside a live visit of a checkpointed run is kept, dumped at once (the payload may change
later), under that visit; the visit's journal entry holds them in order (``Visit.events``). A
replayed visit publishes them again, in order, before it returns its recorded output: where the live
visit published them (inside ``process()``). Publications from outside any visit (a caller, a
lifecycle hook) are not a visit's effect and are not journaled. A subgraph's visits that publish on
the outer graph's bus (``share_event_bus``) publish for the outer visit too: those events are kept
with it as well (an execution knows the visit it runs inside, ``Execution.parent_visit``).

Invariants: an event is journaled only with a visit that completed (a failed visit's events are
dropped with it: its superstep runs again and publishes them again); the payload is stored faithfully
or the record refuses it (``EncodeError``).
"""

from __future__ import annotations

import copy
from typing import Any

from .graph_state import dump_message, load_message
from .runtime import LazyVisit, _current_visit

_WRAPPED = "_spark_ckpt_publish"


def journal_published_events(graph: Any) -> None:
    """Make the graph's event bus journal what live visits publish (once per bus instance)."""
    bus = getattr(graph, "event_bus", None)
    if bus is None or getattr(bus, _WRAPPED, None) is not None:
        return
    original = bus.publish

    async def publish(topic: str, payload: Any, *, metadata: dict[str, Any] | None = None) -> None:
        _journal(bus, _current_visit.get(), _event_data(topic, payload, metadata))
        await original(topic, payload, metadata=metadata)

    publish.__wrapped__ = original  # type: ignore[attr-defined]
    bus.publish = publish
    setattr(bus, _WRAPPED, original)


async def republish(graph: Any, events: list[Any]) -> None:
    """Publish a replayed visit's journaled events again, in order (not journaled a second time:
    the replayed visit's entry already holds them)."""
    bus = graph.event_bus
    publish = getattr(bus, _WRAPPED, None) or bus.publish
    enclosing = _current_visit.get()  # a live outer visit when a subgraph's inner visit replays
    for event in events:
        payload = load_message(event["payload"]) if event.get("message") else event["payload"]
        _journal(bus, enclosing, event)
        await publish(event["topic"], payload, metadata=event.get("metadata"))


def _journal(bus: Any, visit: Any, event: dict[str, Any]) -> None:
    """Keep ``event`` with the live visit publishing it, and with every visit enclosing that one
    (a subgraph's outer visit) that publishes on the same bus: the outer visit's replay publishes
    what its subgraph published there (``share_event_bus``)."""
    while isinstance(visit, LazyVisit):
        ex, key, index = visit.args
        if ex.event_bus is bus:
            ex.journal.published.setdefault((key, index), []).append(event)
        visit = ex.parent_visit


def _event_data(topic: str, payload: Any, metadata: dict[str, Any] | None) -> dict[str, Any]:
    message = type(payload).__name__ == "NodeMessage" and hasattr(payload, "model_dump")
    return {
        "topic": topic,
        "payload": dump_message(payload) if message else copy.deepcopy(payload),
        "message": message,
        "metadata": copy.deepcopy(metadata) if metadata is not None else None,
    }
