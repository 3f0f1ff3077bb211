"""Stable identity for a Spark graph: node keys and a structure digest.

Spark gives every node and graph a fresh ``uuid4().hex`` id per instance, so ids cannot match across
processes. Node keys come from ids the user set (anything that is not a random 32-hex id) or else
from the node's class name, disambiguated in breadth-first order from the start node, following
edges in declaration order. The digest covers keys, classes and edges, so recovering into a graph
whose structure changed is detected.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

_RANDOM_ID = re.compile(r"[0-9a-f]{32}")


def _base_key(node: Any) -> str:
    node_id = getattr(node, "id", None)
    if isinstance(node_id, str) and node_id and not _RANDOM_ID.fullmatch(node_id):
        return node_id
    config = getattr(node, "config", None)
    name = getattr(config, "name", None)
    if isinstance(name, str) and name and name != type(node).__name__:
        return name
    return type(node).__name__


def ordered_nodes(graph: Any) -> list[Any]:
    """Every node reachable from the start node (then any others), in a deterministic order."""
    order: list[Any] = []
    seen: set[int] = set()
    queue = [graph.start]
    while queue:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        for edge in getattr(node, "edges", []):
            if edge.to_node is not None:
                queue.append(edge.to_node)
    # nodes only reachable through event edges or listed in graph.nodes but not from start
    rest = [n for n in getattr(graph, "nodes", ()) if id(n) not in seen]
    rest.sort(key=lambda n: (_base_key(n), type(n).__qualname__))
    return order + rest


def node_keys(graph: Any, explicit: dict[Any, str] | None = None) -> dict[int, str]:
    """``id(node) -> key`` for every node of ``graph``; keys are unique."""
    keys: dict[int, str] = {}
    used: dict[str, int] = {}
    for node in ordered_nodes(graph):
        base = (explicit or {}).get(node) or _base_key(node)
        used[base] = used.get(base, 0) + 1
        key = base if used[base] == 1 else f"{base}#{used[base]}"
        keys[id(node)] = key
    return keys


def _condition_repr(condition: Any) -> Any:
    if condition is None:
        return None
    return [getattr(condition, "expr", None), getattr(condition, "equals", None)]


def structure_digest(graph: Any, keys: dict[int, str]) -> str:
    """Digest of node keys, node classes and edges (with their conditions)."""
    shape = []
    for node in ordered_nodes(graph):
        edges = [
            [keys.get(id(e.to_node)), _condition_repr(getattr(e, "condition", None)), getattr(e, "priority", 0)]
            for e in getattr(node, "edges", [])
        ]
        shape.append([keys[id(node)], f"{type(node).__module__}.{type(node).__qualname__}", edges])
    blob = orjson.dumps(shape, default=repr)
    return hashlib.sha256(blob).hexdigest()[:16]
