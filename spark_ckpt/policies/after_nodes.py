"""strategy="after_nodes": checkpoint after chosen nodes.

    CheckpointConfig(strategy="after_nodes", policy_options={"nodes": ["fetch", "review"]})

A superstep boundary is checkpointed when one of the listed nodes (node keys) completed a live visit in
the supersteps since the last checkpoint, i.e. at the boundary of each superstep in which one of them
ran. Replayed and skipped visits do not count (a checkpoint holds them already). A key that is not a
node of the wrapped graph is a ``ConfigError`` naming the graph's nodes. Explicit requests
(``checkpoint_now()``) and the start and final records are always taken.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .basic import BoundaryPolicy
from .options import check_node_keys, node_key_list, read_options


class AfterNodesPolicy(BoundaryPolicy):
    """See the module docstring."""

    def __init__(self, config: Any) -> None:
        options = read_options(config, "after_nodes", {"nodes": node_key_list})
        self.nodes: frozenset[str] = options.get("nodes", frozenset())
        if not self.nodes:
            raise ConfigError("strategy 'after_nodes' needs policy_options={'nodes': [node keys]}: the nodes after "
                              "which to checkpoint")
        self.reset()

    def bind(self, nodes: dict[str, Any]) -> None:
        check_node_keys(self.nodes, nodes, "policy_options['nodes'] of strategy 'after_nodes'")

    def reset(self) -> None:
        self.ran = False

    def observe_visit(self, event: Any) -> None:
        if not event.replayed and event.node_key in self.nodes:
            self.ran = True

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return self.ran
