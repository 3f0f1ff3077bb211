"""strategy="adaptive": the guide's Adaptive Checkpointing (time-based, operation-based with an adaptive
interval, event-based), decided at superstep boundaries for the whole graph.

    CheckpointConfig(strategy="adaptive", interval=10,            # the guide's base_interval
                     policy_options={"max_seconds": 60,           # time-based (default 60)
                                     "expensive": ["train"],      # node keys: every visit is expensive
                                     "cheap": ["log"]})           # node keys: every visit is cheap

A superstep boundary is checkpointed when any of these holds since the last checkpoint:

* **time-based**: at least ``max_seconds`` seconds passed;
* **operation-based**: at least *interval* live node visits (operations) completed, where the interval
  adapts to the operations since the last checkpoint: ``interval / 2`` if one of them was expensive
  (expensive work is protected sooner), ``interval * 2`` if all of them were cheap, else ``interval``;
* **event-based**: a visit returned ``significant_milestone=True`` in its output dict.

A visit is expensive or cheap by, first, its own result (an output dict with ``expensive`` or
``cheap`` true, as in the guide; ``expensive`` wins when both are), else its node: listed in
``policy_options["expensive"]`` / ``["cheap"]``, else the node's ``checkpoint_hint`` attribute
("expensive" or "cheap", on the instance or its class). Explicit requests (``checkpoint_now()``) and
the start and final records are always taken.

Only live visits count: replayed ones (recovery) and skipped ones are work a checkpoint already holds,
and the counts start over at every checkpoint and when an execution is taken up. So a recovered run
counts from the record it resumed, as the uninterrupted run did.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .basic import BoundaryPolicy
from .options import (
    CHEAP, EXPENSIVE, MILESTONE, check_node_keys, node_hint, node_key_list, output_hints, positive_number, read_options,
)

#: the guide's time-based rule: every 60 seconds
DEFAULT_MAX_SECONDS = 60.0


class AdaptivePolicy(BoundaryPolicy):
    """See the module docstring."""

    def __init__(self, config: Any) -> None:
        options = read_options(config, "adaptive", {
            "max_seconds": positive_number, "expensive": node_key_list, "cheap": node_key_list,
        })
        self.base_interval = float(config.interval)
        self.max_seconds = options.get("max_seconds", DEFAULT_MAX_SECONDS)
        self.expensive_nodes: frozenset[str] = options.get("expensive", frozenset())
        self.cheap_nodes: frozenset[str] = options.get("cheap", frozenset())
        both = sorted(self.expensive_nodes & self.cheap_nodes)
        if both:
            raise ConfigError(f"strategy 'adaptive': node(s) {', '.join(map(repr, both))} are listed both as "
                              "expensive and as cheap in policy_options; keep each in one list")
        #: node key -> "expensive" | "cheap", from the options and the nodes' ``checkpoint_hint``
        self.node_hints: dict[str, str] = {}
        self.reset()

    def bind(self, nodes: dict[str, Any]) -> None:
        check_node_keys(self.expensive_nodes, nodes, "policy_options['expensive'] of strategy 'adaptive'")
        check_node_keys(self.cheap_nodes, nodes, "policy_options['cheap'] of strategy 'adaptive'")
        hints = {key: hint for key, node in nodes.items() if (hint := node_hint(key, node)) is not None}
        hints.update(dict.fromkeys(self.expensive_nodes, EXPENSIVE))  # the config wins over the attribute
        hints.update(dict.fromkeys(self.cheap_nodes, CHEAP))
        self.node_hints = hints

    def reset(self) -> None:
        self.operations = 0
        self.expensive_seen = False
        self.all_cheap = True
        self.milestone = False

    def observe_visit(self, event: Any) -> None:
        if event.replayed:
            return
        hints = output_hints(event.output)
        if hints.get(EXPENSIVE):
            kind = EXPENSIVE
        elif hints.get(CHEAP):
            kind = CHEAP
        else:
            kind = self.node_hints.get(event.node_key)
        self.operations += 1
        self.expensive_seen = self.expensive_seen or kind == EXPENSIVE
        self.all_cheap = self.all_cheap and kind == CHEAP
        self.milestone = self.milestone or bool(hints.get(MILESTONE))

    def interval(self) -> float:
        """The operation-based interval for the operations since the last checkpoint."""
        if self.expensive_seen:
            return self.base_interval / 2
        if self.all_cheap and self.operations:
            return self.base_interval * 2
        return self.base_interval

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return (self.milestone or seconds_since_last >= self.max_seconds
                or (self.operations > 0 and self.operations >= self.interval()))
