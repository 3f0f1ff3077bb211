"""An Agent used as a node of a checkpointed graph: the graph adapter journals its calls through the
graph's visit (``runtime.current_visit()``), and its full state lands in the graph record's
``node_extras`` (made whole like the rest of the record, see ``engine.chain``).
"""

from __future__ import annotations

from typing import Any

from spark.agents import Agent

from .agent_calls import bind, binding_of
from .agent_snapshot import apply_snapshot, isolate_hooks, take_snapshot
from .runtime import register_node_state_adapter


class AgentNodeStateAdapter:
    """Lets the graph adapter journal an Agent node's calls and keep its full state in graph checkpoints."""

    def handles(self, node: Any) -> bool:
        return isinstance(node, Agent)

    def prepare(self, node: Any, graph: Any) -> None:
        if binding_of(node) is None:
            isolate_hooks(node)
        bind(node)

    def snapshot(self, node: Any) -> Any:
        return take_snapshot(node, None)

    def restore(self, node: Any, data: Any) -> None:
        if data:
            apply_snapshot(node, data)


register_node_state_adapter(AgentNodeStateAdapter())
