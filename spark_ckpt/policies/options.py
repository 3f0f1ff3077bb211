"""Reading a strategy's ``CheckpointConfig.policy_options`` and a visit's checkpoint hints.

Every built-in strategy names the options it takes; any other key is a ``ConfigError`` (a typo never
silently does nothing). Node keys given in options are checked against the wrapped graph's nodes
once the graph is known (``check_node_keys``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..errors import ConfigError

#: the per-result hints of the guide's Adaptive Checkpointing: a node's output dict may carry them
EXPENSIVE, CHEAP, MILESTONE = "expensive", "cheap", "significant_milestone"
#: a node's declared redo cost (seconds of work), the guide's ``result['cost']``
COST = "cost"
#: a node attribute (on the instance or its class) marking every visit of it: "expensive" or "cheap"
NODE_HINT_ATTRIBUTE = "checkpoint_hint"


def read_options(config: Any, strategy: str, readers: dict[str, Callable[[str, Any], Any]]) -> dict[str, Any]:
    """``policy_options`` checked by ``readers`` (option name -> ``reader(name, value)`` returning the
    value to use, raising ``ConfigError``); unknown names are refused."""
    given = dict(getattr(config, "policy_options", None) or {})
    unknown = sorted(set(given) - set(readers))
    if unknown:
        accepted = ", ".join(sorted(readers)) or "none"
        raise ConfigError(
            f"strategy {strategy!r} does not take policy_options {', '.join(map(repr, unknown))}; it takes: {accepted}"
        )
    return {name: readers[name](f"policy_options[{name!r}] of strategy {strategy!r}", value)
            for name, value in given.items()}


def positive_number(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def probability(what: str, value: Any) -> float:
    number = positive_number(what, value)
    if number > 1:
        raise ConfigError(f"{what} must be a probability in (0, 1], got {value!r}")
    return number


def node_key_list(what: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)) \
            or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{what} must be a list of node keys (strings), got {value!r}")
    return frozenset(value)


def check_node_keys(keys: Iterable[str], nodes: dict[str, Any], what: str) -> None:
    """``ConfigError`` naming the graph's nodes when ``keys`` holds one the graph does not have."""
    unknown = sorted(set(keys) - set(nodes))
    if unknown:
        raise ConfigError(
            f"{what} names {', '.join(map(repr, unknown))}, not a node of this graph; its nodes are: "
            f"{', '.join(sorted(nodes))}"
        )


def node_hint(key: str, node: Any) -> str | None:
    """A node's ``checkpoint_hint`` attribute ("expensive", "cheap" or None); anything else is refused."""
    hint = getattr(node, NODE_HINT_ATTRIBUTE, None)
    if hint is not None and hint not in (EXPENSIVE, CHEAP):
        raise ConfigError(f"node {key!r} has {NODE_HINT_ATTRIBUTE}={hint!r}; use 'expensive', 'cheap' or None")
    return hint


def output_hints(output: Any) -> dict[str, Any]:
    """The dict a visit returned (a NodeMessage's ``content``, or the output itself), else ``{}``."""
    content = getattr(output, "content", output)
    return content if isinstance(content, dict) else {}


def declared_cost(hints: dict[str, Any]) -> float | None:
    """The visit's declared ``cost`` (seconds of work), if it is a non-negative finite number."""
    cost = hints.get(COST)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < float("inf"):
        return None
    return float(cost)
