"""Records read like the guide's dicts: ``checkpoint["graph_state"]``, ``checkpoint.get(...)``, ``to_dict()``.

Spark's guide shows a checkpoint as a dict ("Checkpoint Contents"). spark-ckpt keeps its records as
typed attrs objects (what is stored is versioned by them), and gives each the guide's view on top:
the guide's field names with the guide's types, and spark-ckpt's own fields beside them. Where the two
differ the guide's name holds the guide's type and spark-ckpt's value has a name of its own:

* ``version``: ``"6.0"`` (text, as in the guide); ``content_version``: ``6``, the record layout;
* ``timestamp``: ISO 8601 UTC text (``"2026-12-02T08:30:00.123456Z"``); ``created_at``: epoch seconds.

The view is computed from the record when read: nothing here is stored. Values are the record's own
(graph state values come back as their types); ``to_dict()`` builds fresh containers each call.
No ``__len__``: a record stays truthy (``if last_checkpoint:`` in the guide), however few fields it has.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Iterator

import attrs

_MISSING = object()


def iso_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as the guide writes a time: ISO 8601 in UTC with a ``Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def version_text(version: int) -> str:
    """A layout number as the guide's version text (``6`` -> ``"6.0"``)."""
    return f"{version}.0"


def shallow_fields(obj: Any) -> dict[str, Any]:
    """An attrs record's fields as a new dict, values as they are (a user's attrs value in a graph
    state must stay itself, which ``attrs.asdict`` would turn into a dict)."""
    return {field.name: getattr(obj, field.name) for field in attrs.fields(type(obj))}


class DictView:
    """The mapping half of a record: subclasses list ``_view_fields`` (name -> getter)."""

    __slots__ = ()
    _view_fields: dict[str, Callable[[Any], Any]] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            getter = self._view_fields[key]
        except (KeyError, TypeError):
            raise KeyError(key) from None
        return getter(self)

    def get(self, key: str, default: Any = None) -> Any:
        getter = self._view_fields.get(key, _MISSING) if isinstance(key, str) else _MISSING
        return default if getter is _MISSING else getter(self)

    def __contains__(self, key: object) -> bool:
        return key in self._view_fields

    def keys(self) -> list[str]:
        return list(self._view_fields)

    def __iter__(self) -> Iterator[str]:
        return iter(self._view_fields)

    def items(self) -> list[tuple[str, Any]]:
        return [(key, getter(self)) for key, getter in self._view_fields.items()]

    def values(self) -> list[Any]:
        return [getter(self) for getter in self._view_fields.values()]

    def to_dict(self) -> dict[str, Any]:
        """Every field of the view in a new dict (the guide's names first)."""
        return dict(self.items())


# -- graph checkpoints ------------------------------------------------------------------------------
def _node_state(snapshot: Any) -> dict[str, Any]:
    # Spark's node context_snapshot is recursive and rebuilt on every visit: never kept (None here)
    return {"context_snapshot": None, "processing": snapshot.processing, "process_count": snapshot.process_count,
            "pending_inputs": list(snapshot.pending_inputs), "outputs": snapshot.outputs,
            "custom": dict(snapshot.custom)}


def _visit(visit: Any) -> dict[str, Any]:
    data = shallow_fields(visit)
    data["node"] = visit.node_key  # the guide's execution trace names the node
    return data


GRAPH_CHECKPOINT_FIELDS: dict[str, Callable[[Any], Any]] = {
    # the guide's "Checkpoint Contents", in its order
    "version": lambda ck: version_text(ck.version),
    "timestamp": lambda ck: iso_timestamp(ck.timestamp),
    "graph_metadata": lambda ck: shallow_fields(ck.graph_metadata),
    "graph_state": lambda ck: dict(ck.graph_state),
    "node_states": lambda ck: {key: _node_state(snap) for key, snap in ck.node_states.items()},
    "current_node": lambda ck: ck.current_node,
    "execution_history": lambda ck: [_visit(v) for v in ck.execution_history],
    # spark-ckpt's own
    "checkpoint_id": lambda ck: ck.checkpoint_id,
    "id": lambda ck: ck.checkpoint_id,
    "graph_id": lambda ck: ck.graph_id,
    "execution_id": lambda ck: ck.execution_id,
    "seq": lambda ck: ck.seq,
    "status": lambda ck: ck.status,
    "superstep": lambda ck: ck.superstep,
    "created_at": lambda ck: ck.timestamp,
    "content_version": lambda ck: ck.version,
    "run_input": lambda ck: ck.run_input,
    "failure": lambda ck: None if ck.failure is None else shallow_fields(ck.failure),
    "result": lambda ck: ck.result,
    "partial_state": lambda ck: ck.partial_state,
    "history_start": lambda ck: ck.history_start,
    "skip_nodes": lambda ck: list(ck.skip_nodes),
    "extras": lambda ck: dict(ck.extras),
    "kind": lambda ck: ck.kind,
}

HEADER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "checkpoint_id": lambda h: h.checkpoint_id,
    "id": lambda h: h.checkpoint_id,
    "graph_id": lambda h: h.graph_id,
    "execution_id": lambda h: h.execution_id,
    "seq": lambda h: h.seq,
    "timestamp": lambda h: iso_timestamp(h.created_at),
    "created_at": lambda h: h.created_at,
    "status": lambda h: h.status,
    "kind": lambda h: h.kind,
    "size": lambda h: h.size,
}


# -- agent checkpoints ------------------------------------------------------------------------------
def agent_guide_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """An agent snapshot (as stored) in the guide's shape, spark-ckpt's fields kept beside it.

    ``version`` "2.0" (``format_version`` 2), ISO ``timestamp`` (``created_at``), ``memory.memory_policy``
    the policy's name ("full", "rolling_window"; ``memory.memory_settings``: the whole setting), each cost call's ``model``
    (``model_id``), ``strategy_state.react_history`` (``history``). ``agent_stored_form`` undoes it."""
    view = dict(snapshot)
    version = snapshot.get("version")
    if type(version) is int:
        view["version"], view["format_version"] = version_text(version), version
    when = snapshot.get("timestamp")
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        view["timestamp"], view["created_at"] = iso_timestamp(when), when
    memory = snapshot.get("memory")
    if isinstance(memory, dict) and isinstance(memory.get("memory_policy"), dict):
        view["memory"] = {**memory, "memory_policy": memory["memory_policy"].get("policy"),
                          "memory_settings": memory["memory_policy"]}
    costs = snapshot.get("cost_tracking")
    if isinstance(costs, dict) and isinstance(costs.get("calls"), list):
        view["cost_tracking"] = {**costs, "calls": [
            {**call, "model": call.get("model_id")} if isinstance(call, dict) else call for call in costs["calls"]]}
    strategy = snapshot.get("strategy_state")
    if isinstance(strategy, dict) and "history" in strategy:
        view["strategy_state"] = {**strategy, "react_history": strategy["history"]}
    return view


def agent_stored_form(view: dict[str, Any]) -> dict[str, Any]:
    """The stored shape of an agent snapshot given in either shape (a guide view, or as stored)."""
    if not isinstance(view, dict) or "format_version" not in view:
        return view
    stored = {k: v for k, v in view.items() if k not in ("format_version", "created_at")}
    stored["version"] = view["format_version"]
    if "created_at" in view:
        stored["timestamp"] = view["created_at"]
    memory = view.get("memory")
    if isinstance(memory, dict) and "memory_settings" in memory:
        stored["memory"] = {k: v for k, v in memory.items() if k != "memory_settings"}
        stored["memory"]["memory_policy"] = memory["memory_settings"]
    costs = view.get("cost_tracking")
    if isinstance(costs, dict) and isinstance(costs.get("calls"), list):
        stored["cost_tracking"] = {**costs, "calls": [
            {k: v for k, v in call.items() if k != "model"} if isinstance(call, dict) else call
            for call in costs["calls"]]}
    strategy = view.get("strategy_state")
    if isinstance(strategy, dict):
        stored["strategy_state"] = {k: v for k, v in strategy.items() if k != "react_history"}
    return stored
