"""Continuing a Spark graph's execution from a record's frontier (``engine.frontier``), not by replay.

Spark 0.3.2's loop (``Graph._run_internal``) always starts with ``active_nodes = {graph.start}``, and a
node whose pending inputs are not empty pops the first of them before it falls back to the run's
input. So a superstep whose only active node is ``F`` starts Spark's loop when ``graph.start`` is
``F`` for that run and ``F``'s pending inputs are the ones the record stored: what follows is what
the uninterrupted run did from there. The run's result is the same too: Spark's result is the output
of the last visit of a node with no active edge, and the final superstep of a run always has one.

Spark queues a parent's ``outputs`` object itself, so a node editing its input in place edits its
parent's last output too; a pending input from its parent's latest visit is therefore restored as
that parent's restored output, the same object (``restore``), as replay would deliver it.

That holds for the graphs and records ``possible`` and ``eligible`` accept; any other continues by
replaying its journal as before:

* one node waiting (several would have to start in one superstep; Spark starts one);
* nodes that queue what a parent delivers as Spark's ``BaseNode`` does (``receive_from_parent``,
  ``enqueue_input``, ``pop_ready_input``, on the class and the instance): then the nodes with
  pending inputs are exactly the next superstep's, and each pops one of them;
* no lifecycle hooks but spark-ckpt's, no Spark checkpoint config and no Spark telemetry: Spark
  numbers the supersteps of a run from 0, so they would see other iteration numbers than in the
  uninterrupted run;
* durability "sync" or "async" ("exit" stores only the newest of the whole records the journal
  links through);
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
from .graph_state import load_message, load_run_input, restore_into_graph, task_type

if TYPE_CHECKING:
    from .graph import CheckpointedGraph


#: the queuing methods a node must have as Spark's ``BaseNode`` defines them
_QUEUING = ("receive_from_parent", "enqueue_input", "pop_ready_input")


def possible(owner: CheckpointedGraph) -> bool:
    """Whether this graph can ever continue from a frontier (its shape; ``eligible`` checks a record)."""
    graph = owner.graph
    if owner._timed_edges or owner._event_edges or owner._unsafe_keys or owner.config.durability == "exit":
        return False
    if getattr(graph, "start", None) is None or not getattr(graph, "nodes", None):
        return False
    if getattr(graph, "_policy_engine", None) is not None or getattr(graph, "_checkpoint_config", None):
        return False
    if getattr(graph, "_telemetry_manager", None) is not None or not _only_own_hooks(graph):
        return False
    for node in owner._nodes_by_key.values():
        if not _plain_queuing(node):
            return False
        if getattr(node, "_create_runtime_graph", None) is not None or getattr(node, "human_policy", None) is not None:
            return False
    return len(owner._nodes_by_key) == len(graph.nodes)


def _plain_queuing(node: Any) -> bool:
    from spark.nodes.base import BaseNode

    for name in _QUEUING:
        if getattr(type(node), name, None) is not getattr(BaseNode, name):
            return False
        own = vars(node).get(name)  # set on the instance: only spark-ckpt's delivery wrapper is allowed
        if own is not None and not getattr(own, "spark_ckpt_delivery", False):
            return False
        if own is not None and getattr(own.__wrapped__, "__func__", None) is not getattr(BaseNode, name):
            return False
    return True


def _only_own_hooks(graph: Any) -> bool:
    hooks = getattr(graph, "_lifecycle_hooks", None)
    if not isinstance(hooks, dict):
        return False
    return all(type(getattr(hook, "__self__", None)).__module__.startswith("spark_ckpt.")
               for registered in hooks.values() for hook in registered)


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


def restore(owner: CheckpointedGraph, found: Frontier) -> Any:
    """Graph state and node states from ``found.record`` with the pending inputs, each node's last
    output (replay would have set it: a node may read its own last output, and the next record stores
    it), and a pending input from its parent's latest visit being that parent's output object; returns
    the waiting node."""
    nodes, record = owner._nodes_by_key, found.record
    restore_into_graph(owner.graph, nodes, record, pending=True)
    for key, snapshot in record.node_states.items():
        node = nodes.get(key)
        if node is not None:
            node.outputs = load_message(snapshot.outputs or None)
    (key,) = found.waiting
    waiting = nodes[key]
    queue, stored = waiting._state["pending_inputs"], record.node_states[key]
    for position, parent in _from_latest_visits(owner, found, key):
        parent_state = record.node_states.get(parent)
        if parent_state is not None and stored.pending_inputs[position] == parent_state.outputs:
            queue[position] = nodes[parent].outputs
    return waiting


def _from_latest_visits(owner: CheckpointedGraph, found: Frontier, key: str) -> Iterator[tuple[int, str]]:
    """``(position, parent)`` of the waiting node's pending inputs that its parent's latest visit delivered."""
    nodes, counts = owner._nodes_by_key, found.counts
    if key in owner._fan_in:  # each input's origin is stored
        for position, origin in enumerate(found.record.node_states[key].pending_from):
            if origin and origin[0] in nodes and origin[1] == counts.get(origin[0], 0) - 1:
                yield position, origin[0]
        return
    waiting, parents = nodes[key], owner._parents.get(key, ())
    if len(parents) == 1 and counts.get(parent := next(iter(parents))):
        # one parent delivers in its visit order: the newest inputs are from its latest visit, one per
        # edge to this node its output takes (Spark's own test, on the output restored above)
        taken = sum(edge.to_node is waiting for edge in nodes[parent].iter_active_edges())
        pending = len(waiting._state["pending_inputs"])
        for position in range(max(0, pending - taken), pending):
            yield position, parent


@contextlib.contextmanager
def started_at(graph: Any, node: Any) -> Iterator[None]:
    """Spark's loop starts at ``node`` for the duration of the run (see the module docstring)."""
    start = graph.start
    graph.start = node
    try:
        yield
    finally:
        graph.start = start
