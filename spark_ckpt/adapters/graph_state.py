"""Spark graph and node state, read into records and restored from them.

What a record holds of a Spark graph: the graph state (``graph.state``, without Spark's bookkeeping
keys, the ones ``get_snapshot`` leaves out), and per node what differs from a fresh node
(``process_count``, pending inputs and their origins, the last output, the user's own keys). Spark's
``NodeMessage`` travels as plain data (``dump_message``/``load_message``).

Workarounds for Spark 0.3.2 live here too: ``_record_snapshot`` nests every previous context snapshot
into the next one (cost and recursion grow per visit), so it is dropped after each visit and run;
``ExecutionContext`` is a slots dataclass, so ``context.create_checkpoint()`` is added to the class.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

from ..codec.convert import dumps_data, faithful_copy
from ..codec.values import is_plain
from ..errors import EncodeError
from ..engine.damage import damaged
from ..model import GraphCheckpoint
from .runtime import node_state_adapter_for

#: keys Spark keeps in a node's _state that are runtime plumbing, not user state
NODE_RUNTIME_KEYS = frozenset({"context_snapshot", "processing", "pending_inputs", "process_count"})


def is_bookkeeping(state: Any, key: str) -> bool:
    """Spark's own keys in graph state (schema version, mailboxes), which ``get_snapshot`` leaves out."""
    return key == getattr(state, "_SCHEMA_VERSION_KEY", "__schema_version__") or key.startswith(
        f"{getattr(state, '_MAILBOX_PREFIX', '__mailbox__')}:")


class SparkGraphState:
    """A Spark graph's state as the record builder reads it (``record_builder.StateSource``)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def raw(self) -> dict[str, Any]:
        return self.graph.state.get_raw()

    def is_bookkeeping(self, key: str) -> bool:
        return is_bookkeeping(self.graph.state, key)

    def without_bookkeeping(self) -> dict[str, Any]:
        return self.graph.state.get_snapshot()


# -- messages --------------------------------------------------------------------------------------
def dump_message(message: Any) -> Any:
    """A NodeMessage as plain data (``raw`` is the model's unparsed output: kept only if plain data)."""
    if message is None:
        return None
    dump = getattr(message, "model_dump", None)
    if dump is None:
        return {"content": message}
    data = dump(mode="python", exclude_defaults=True)
    for key, dumped in data.items():
        # pydantic dumps a model or dataclass in ``content`` to a dict: keep such values exactly (a copy,
        # as the dump is)
        original = getattr(message, key, dumped)
        if is_plain(original):
            continue
        try:
            data[key] = faithful_copy(original, what=f"node output {key}")
        except EncodeError:
            # ``raw`` holds a model's unparsed response object: routing never reads it, and it is usually
            # not storable; its repr is kept rather than failing the checkpoint. Any other value that
            # cannot be stored stays as it is, and the record refuses it naming its path.
            data[key] = {"__repr__": repr(original)[:2000]} if key == "raw" else original
    return data


def load_message(data: Any) -> Any:
    from spark.nodes.types import NodeMessage

    if data is None:
        return NodeMessage(content=None)
    return NodeMessage(**data)


class MessageDumps:
    """NodeMessage dumps by object identity: an output is dumped once, not at every record that holds
    it (journal entry, the node's last output, a successor's pending input)."""

    def __init__(self, carried: dict[int, tuple[Any, Any]] | None = None) -> None:
        self.cache: dict[int, tuple[Any, Any]] = dict(carried or {})

    def dump(self, message: Any) -> Any:
        cached = self.cache.get(id(message))
        if cached is not None and cached[0] is message:
            return cached[1]
        if len(self.cache) > 4096:  # bound the cache on very long runs
            self.cache.clear()
        dumped = dump_message(message)
        self.cache[id(message)] = (message, dumped)
        return dumped

    def held_by(self, nodes: Iterable[Any]) -> dict[int, tuple[Any, Any]]:
        """The dumps of the outputs ``nodes`` still hold: the next run's start record reads every node
        again, and would otherwise re-dump each of them."""
        carried = {}
        for node in nodes:
            outputs = getattr(node, "outputs", None)
            cached = self.cache.get(id(outputs))
            if cached is not None and cached[0] is outputs:
                carried[id(outputs)] = cached
        return carried


def dump_run_input(inputs: Any) -> Any:
    """The run's input as data: {"kind": "message"|"task"|"dict"|"value", "value": ...}.

    A Spark ``Task`` is stored whole (type, budget, campaign, metadata, ids, dependencies), so a
    recovery re-enters Spark's run with the same Task; its ``metadata`` and extra fields stay as the
    user gave them (the codec refuses what it cannot store faithfully, it never converts them).
    """
    if inputs is None:
        return None
    if is_task(inputs):
        return {"kind": "task", "value": dump_task(inputs)}
    if hasattr(inputs, "model_dump") and type(inputs).__name__ == "NodeMessage":
        return {"kind": "message", "value": dump_message(inputs)}
    if isinstance(inputs, dict):
        return {"kind": "dict", "value": inputs}
    return {"kind": "value", "value": inputs}


def load_run_input(data: Any) -> Any:
    if data is None:
        return None
    if data["kind"] == "message":
        return load_message(data["value"])
    if data["kind"] == "task":
        return load_task(data["value"])
    return data["value"]


def is_task(value: Any) -> bool:
    return type(value).__name__ == "Task" and type(value).__module__.startswith("spark.")


def dump_task(task: Any) -> dict[str, Any]:
    # Spark's own fields through pydantic's JSON mode (enums, budgets, campaigns); what the user put
    # in ``metadata``, the other dict fields (``input_schema``, ``error``) and extra fields as given:
    # JSON mode would turn a datetime in them into a string, a tuple into a list
    user_dicts = {name for name in type(task).model_fields if isinstance(getattr(task, name, None), dict)}
    own = {"inputs", "metadata", *user_dicts, *(task.model_extra or {})}
    data = task.model_dump(mode="json", exclude=own)
    data["inputs"] = dump_message(task.inputs)
    for name in user_dicts:
        data[name] = dict(getattr(task, name))
    data["metadata"] = dict(task.metadata or {})
    extra = dict(task.model_extra or {})
    if extra:
        data["extra"] = extra
    return data


def load_task(data: dict[str, Any]) -> Any:
    from spark.graphs.tasks import Task

    fields = dict(data)
    extra = fields.pop("extra", None) or {}
    fields["inputs"] = load_message(fields.get("inputs"))
    return Task(**fields, **extra)


def task_type(inputs: Any) -> str | None:
    """The Spark task type of a run input (None for plain inputs: Spark runs them as ONE_OFF)."""
    if not is_task(inputs):
        return None
    kind = inputs.type
    return getattr(kind, "value", str(kind))


def plain_or_repr(value: Any) -> Any:
    try:
        dumps_data(value)
        return value
    except Exception:
        return repr(value)


# -- nodes -----------------------------------------------------------------------------------------
def node_entry(
    node: Any, dumps: MessageDumps, *, adapter_node: bool, origins: Callable[[Any], list[Any]] | None,
) -> dict[str, Any]:
    """A node's state for ``node_states``: only what differs from a fresh node (NodeSnapshot's
    defaults), so records stay small. ``origins(pending)``: where each pending input came from (for
    nodes with several parents); an adapter node (agent) keeps its own state in ``node_extras``."""
    state = getattr(node, "_state", None) or {}
    entry: dict[str, Any] = {}
    if state.get("process_count"):
        entry["process_count"] = state["process_count"]
    if state.get("processing"):
        entry["processing"] = True
    pending = state.get("pending_inputs")
    if pending:
        entry["pending_inputs"] = [dumps.dump(m) for m in pending]
        if origins is not None:
            entry["pending_from"] = origins(pending)
    outputs = dumps.dump(getattr(node, "outputs", None))
    if outputs:
        entry["outputs"] = outputs
    if not adapter_node and not state.keys() <= NODE_RUNTIME_KEYS:
        entry["custom"] = {k: v for k, v in state.items() if k not in NODE_RUNTIME_KEYS}
    return entry


def restore_into_graph(graph: Any, nodes: dict[str, Any], record: GraphCheckpoint, *, pending: bool = True) -> None:
    """Graph state and per-node state from ``record``, with the pending inputs it stored (unless
    ``pending`` is False: a continuation's replay delivers them again).

    Everything is rebuilt from the record before the graph is touched, so a damaged record
    (``CorruptCheckpointError``) leaves the graph as it was; an adapter (agent) node checks its own
    state before it changes the node."""
    with damaged(f"checkpoint {record.checkpoint_id}"):
        graph_state = copy.deepcopy(record.graph_state)
        restored = []
        for key, snapshot in record.node_states.items():
            node = nodes.get(key)
            if node is not None:
                inputs = [load_message(m) for m in snapshot.pending_inputs] if pending else []
                restored.append((node, copy.deepcopy(snapshot.custom), int(snapshot.process_count), inputs,
                                 record.node_extras.get(key)))
        raw = graph.state.get_raw()
        preserved = {k: v for k, v in raw.items() if k.startswith("__")}
        raw.clear()
        raw.update(preserved)
        raw.update(graph_state)
        for node, custom, process_count, inputs, extras in restored:
            state = node._state
            for k in [k for k in state if k not in NODE_RUNTIME_KEYS]:
                del state[k]
            state.update(custom)
            state["process_count"] = process_count
            state["context_snapshot"] = None
            state["pending_inputs"].clear()
            state["pending_inputs"].extend(inputs)
            adapter = node_state_adapter_for(node)
            if adapter is not None and extras is not None:
                adapter.restore(node, extras)


def check_replayable(record: GraphCheckpoint) -> None:
    """Rebuild once every message a continuation of ``record`` (made whole) will rebuild while it
    replays, so a damaged journal is refused (``CorruptCheckpointError``) before anything runs or is
    stored, instead of failing inside Spark's run. Costs one message per journaled visit."""
    with damaged(f"checkpoint {record.checkpoint_id}"):
        load_run_input(record.run_input)
        for visit in record.execution_history:
            load_message(visit.output)
            for event in visit.events or ():
                if event.get("message"):
                    load_message(event["payload"])
        for output in record.skip_outputs.values():
            if output is not None:
                load_message(output)
        for key, entry in record.inflight.items():  # each continues one visit of its node
            if not isinstance(entry, dict) or type(entry.get("visit_index")) is not int:
                raise TypeError(f"the in-flight journal of node {key!r} is not {{visit_index, data}}")
        if record.result is not None:
            load_message(record.result)


def drop_context_snapshots(nodes: Iterable[Any]) -> None:
    """Spark nests every previous context snapshot into the next one; nothing reads them."""
    for node in nodes:
        state = getattr(node, "_state", None)
        if isinstance(state, dict):
            state["context_snapshot"] = None


def install_context_create_checkpoint(request: Callable[[], Any]) -> None:
    """Give ``process()`` the guide's ``await context.create_checkpoint()`` (``request()``).

    ``ExecutionContext`` is a slots dataclass, so no attribute can be set on an instance; a method
    added to the class is the one way that costs nothing per visit (a per-visit context subclass
    made Spark's own visit ~30 us slower). Only this new name is added; nothing of Spark's changes.
    Outside a checkpointed run the method raises a clear ``SparkCkptError``.
    """
    from spark.nodes.types import ExecutionContext

    if getattr(ExecutionContext, "create_checkpoint", None) is None:
        async def create_checkpoint(self: Any) -> str:
            return await request()

        ExecutionContext.create_checkpoint = create_checkpoint  # type: ignore[attr-defined]
