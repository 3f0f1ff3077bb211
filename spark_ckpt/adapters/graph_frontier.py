"""Continuing a Spark graph's execution from a record's frontier (``engine.frontier``), not by replay.

Spark 0.3.2's loop (``Graph._run_internal``) always starts with ``active_nodes = {graph.start}``, and a
node whose pending inputs are not empty pops the first of them before it falls back to the run's
input. So a superstep whose only active node is ``F`` starts Spark's loop when ``graph.start`` is
``F`` for that run and ``F``'s pending inputs are the ones the record stored: what follows is what
the uninterrupted run did from there. The run's result is the same too: Spark's result is the output
of the last visit of a node with no active edge, and the final superstep of a run always has one.

That holds for the graphs and records ``possible`` and ``eligible`` accept; any other continues by
replaying its journal as before:

* one node waiting (several would have to start in one superstep; Spark starts one);
* nodes that queue what a parent delivers (``BaseNode.receive_from_parent``): then the nodes with
  pending inputs are exactly the next superstep's, and each pops one of them;
* no timer, delayed or event edges, subgraphs, nodes not safe to re-run, approval gates or human
  input (their replay re-creates effects or identities the record alone does not hold), no visit in
  flight, and not a long-running task.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

from ..engine.frontier import Frontier
from ..engine.unsafe_visits import in_record
from ..model import FAILED, RUNNING
from .graph_state import load_message, load_run_input, task_type

if TYPE_CHECKING:
    from .graph import CheckpointedGraph


def possible(owner: CheckpointedGraph) -> bool:
    """Whether this graph can ever continue from a frontier (its shape; ``eligible`` checks a record)."""
    from spark.nodes.base import BaseNode

    graph = owner.graph
    if owner._timed_edges or owner._event_edges or owner._unsafe_keys:
        return False
    if getattr(graph, "start", None) is None or not getattr(graph, "nodes", None):
        return False
    if getattr(graph, "_policy_engine", None) is not None:
        return False
    for node in owner._nodes_by_key.values():
        if type(node).receive_from_parent is not BaseNode.receive_from_parent:
            return False
        if getattr(node, "_create_runtime_graph", None) is not None or getattr(node, "human_policy", None) is not None:
            return False
    return len(owner._nodes_by_key) == len(graph.nodes)


def eligible(owner: CheckpointedGraph, found: Frontier) -> bool:
    """Whether the execution continues from ``found`` (see the module docstring)."""
    from .graph import LONG_LIVED_TASK_TYPES

    record = found.record
    if record.status not in (RUNNING, FAILED) or record.inflight or in_record(record.inflight, record.extras):
        return False
    waiting = found.waiting
    if len(waiting) != 1 or waiting[0] not in owner._nodes_by_key:
        return False
    return task_type(load_run_input(record.run_input)) not in LONG_LIVED_TASK_TYPES


def restore_outputs(nodes: dict[str, Any], found: Frontier) -> None:
    """Each node's last output as the record holds it: replay would have set it (a node may read its
    own last output, and the next record stores it)."""
    for key, snapshot in found.record.node_states.items():
        node = nodes.get(key)
        if node is not None:
            node.outputs = load_message(snapshot.outputs or None)


@contextlib.contextmanager
def started_at(graph: Any, node: Any) -> Iterator[None]:
    """Spark's loop starts at ``node`` for the duration of the run (see the module docstring)."""
    start = graph.start
    graph.start = node
    try:
        yield
    finally:
        graph.start = start
