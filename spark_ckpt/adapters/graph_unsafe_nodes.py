"""Graph nodes marked not safe to re-run: which nodes are marked, the started-visit marker stored before
such a visit runs live, and the refusal to recover past one.

A node whose ``process()`` has a side effect that must not happen twice (a payment, an e-mail) is
marked with ``@not_safe_to_rerun`` (on its class, on the instance, or on its ``process`` method) or
named in ``CheckpointConfig(unsafe_nodes={...})``. Graph recovery re-runs the visits of the superstep
that did not complete, so before a live visit of a marked node calls ``process()``, a marker (node key,
visit index, superstep, input) is stored durably, whatever the durability mode, in a record built on
the last boundary under the execution's lease (``engine.unsafe_visits``). Replayed and skipped visits
write nothing; unmarked nodes cost nothing.

Recovering or continuing a record whose markers name a visit it would run again raises
``UnsafeToRetryError`` before anything runs: the visit may or may not have taken effect. That holds for
a visit that failed with an exception too (strict: it may have acted before it failed).
``allow_unsafe_rerun=True`` runs it again; a ``skip_node`` request for the node uses the given output
instead of running it, so it is not refused either.

Execution modes: supersteps (the marker is written by the node wrapper, ``graph_visits``); task batches
(each task is an execution of its own); long-running graphs (the marker is written when the node's
mailbox hands it a message, ``graph_long_running``); a marked node inside a subgraph marks the outer
SubgraphNode visit (the subgraph visit runs again as a whole, or from its last inner boundary), with the
inner node named in the error.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..engine.record_builder import FULL_HISTORY_EVERY
from ..engine.unsafe_visits import MARKERS, UnsafeVisits, in_record
from ..errors import ConfigError, SparkCkptError, UnsafeToRetryError
from ..model import FAILED, GraphCheckpoint
from .agent_unsafe_tools import UNSAFE_ATTR
from .graph_state import dump_message, plain_or_repr

if TYPE_CHECKING:
    from .graph import CheckpointedGraph
    from .graph_run import Execution, GraphRunner


def node_is_marked(node: Any) -> bool:
    """Whether ``@not_safe_to_rerun`` marks ``node``: its class, the instance, or its ``process``."""
    return bool(getattr(node, UNSAFE_ATTR, False) or getattr(getattr(node, "process", None), UNSAFE_ATTR, False))


def marked_keys(owner: CheckpointedGraph) -> frozenset[str]:
    """The keys of ``owner``'s nodes not safe to re-run (marked, or in ``config.unsafe_nodes``)."""
    nodes = owner._nodes_by_key
    unknown = sorted(set(owner.config.unsafe_nodes) - set(nodes))
    if unknown:
        raise ConfigError(
            f"CheckpointConfig.unsafe_nodes names {', '.join(map(repr, unknown))}, not node(s) of graph "
            f"{owner.graph_id!r}; its node keys: {', '.join(nodes)}"
        )
    keys = frozenset(owner.config.unsafe_nodes) | {key for key, node in nodes.items() if node_is_marked(node)}
    if keys and MARKERS in nodes:
        raise ConfigError(f"graph {owner.graph_id!r} has a node keyed {MARKERS!r}, a key spark-ckpt keeps for "
                          "itself when nodes are not safe to re-run; give it another id")
    return keys


# -- the marker, before a live visit -----------------------------------------------------------------------
def marker(key: str, index: int, superstep: int, inputs: Any) -> dict[str, Any]:
    return {"node_key": key, "index": index, "superstep": superstep,
            "input": plain_or_repr(dump_message(inputs)), "started_at": time.time()}


async def record_started(runner: GraphRunner, ex: Execution, data: dict[str, Any]) -> None:
    """Store that the visit ``data`` describes started, before it runs (see the module docstring).
    Inside a subgraph, the outer SubgraphNode visit is marked instead (in the outer execution)."""
    owner = runner.owner
    outer = vars(owner).get("outer")  # (a NestedGraph's; not the wrapped graph's attribute)
    if outer is not None:  # a nested run: its records live in the outer visit's journal
        visit, outer_runner = owner.outer_visit, outer._runner
        outer_ex = outer_runner.active
        inner = [{"node_key": data["node_key"], "index": data["index"]}, *data.get("inner", ())]
        outer_data = marker(visit.node_key, visit.visit_index, visit.superstep, None)
        outer_data.update(input=data["input"], inner=inner)  # the input of the innermost marked node
        return await record_started(outer_runner, outer_ex, outer_data)
    journal, writer = ex.journal, ex.writer
    if journal.unsafe is None:
        journal.unsafe = UnsafeVisits()
    journal.unsafe.started(data)
    try:
        await writer.flush()  # the boundary it goes on is stored first (durability "async" / "exit")
        if writer.last_blob is None:
            raise SparkCkptError(
                f"node {data['node_key']!r} of graph {owner.graph_id!r} is not safe to re-run, and no record of "
                f"execution {ex.execution_id} to store that its visit started on is stored yet; nothing was run"
            )
        # written and awaited in every durability mode: a crash inside the visit must be detected
        fields = journal.inflight_fields(FULL_HISTORY_EVERY)
        await runner.store(ex, runner.on_boundary(ex, inflight=fields), wait=True)
    except BaseException:
        journal.unsafe.forget(data["node_key"], data["index"])
        raise


def visit_completed(ex: Execution, key: str, index: int) -> None:
    """A visit of a marked node (or one that holds marked nodes) is in the journal now."""
    journal = ex.journal
    if journal.unsafe is not None:
        journal.unsafe.completed(key, index, journal.end)


# -- the refusal, before recovery runs anything ---------------------------------------------------------
def refuse_unsafe_rerun(owner: CheckpointedGraph, record: GraphCheckpoint, *, allowed: bool,
                        skips: dict[str, Any]) -> None:
    """Raise ``UnsafeToRetryError`` when continuing ``record`` (made whole) would run again a visit of a
    node not safe to re-run that started and is not in its journal (unless ``allowed``, or the node has
    a ``skip_node`` request)."""
    markers = in_record(record.inflight, record.extras)
    if allowed or not markers:
        return
    journaled = {(visit.node_key, visit.index) for visit in record.execution_history}
    stuck = [m for m in markers if (m["node_key"], m["index"]) not in journaled and m["node_key"] not in skips]
    if stuck:
        raise UnsafeToRetryError(_explain(owner, record, stuck))


def refuse_unsafe_fork(owner: CheckpointedGraph, record: GraphCheckpoint, *, allowed: bool,
                       skips: dict[str, Any]) -> None:
    """Raise ``UnsafeToRetryError`` when a fork from ``record`` (made whole) would run again a visit of a
    node not safe to re-run that its execution made (or started) after ``record``: a fork re-runs every
    visit past the record it starts from."""
    if allowed or not owner._unsafe_keys:
        return
    newest = owner.backend.list(execution_id=record.execution_id, limit=1)
    if not newest or newest[0].seq <= record.seq:
        return
    later = owner._planner.load(newest[0].checkpoint_id)
    done = {(visit.node_key, visit.index) for visit in record.execution_history}
    again = [
        {"node_key": v.node_key, "index": v.index, "superstep": v.superstep, "input": "(as in that run)"}
        for v in later.execution_history
        if v.node_key in owner._unsafe_keys and (v.node_key, v.index) not in done and v.node_key not in skips
    ]
    journaled = {(v.node_key, v.index) for v in later.execution_history}
    again += [m for m in in_record(later.inflight, later.extras)
              if (m["node_key"], m["index"]) not in journaled and m["node_key"] not in skips]
    if again:
        raise UnsafeToRetryError(
            f"continuing checkpoint {record.checkpoint_id} starts a new execution from it, which runs again "
            "every visit its execution made after it; among them: " + "; ".join(
                f"node {m['node_key']!r} visit {m['index']}" for m in again)
            + ", marked not safe to re-run (its side effect happened, or may have). Nothing was run. Continue "
            "from a later checkpoint, skip_node it, or pass allow_unsafe_rerun=True to run it again"
        )


def _explain(owner: CheckpointedGraph, record: GraphCheckpoint, stuck: list[dict[str, Any]]) -> str:
    failure = record.failure if record.status == FAILED else None
    visits = []
    for m in stuck:
        what = f"node {m['node_key']!r} visit {m['index']} (superstep {m.get('superstep')}"
        what += "".join(f", inside it node {inner['node_key']!r} visit {inner['index']}" for inner in m.get("inner", ()))
        what += f", input {m.get('input')!r})"
        if failure is not None and failure.node_key == m["node_key"] and failure.index == m["index"]:
            what += f" failed with {failure.error_type}: {failure.error}"
        else:
            what += " started and its completion was not stored (the process stopped, or the run failed)"
        visits.append(what)
    return (
        f"execution {record.execution_id} of graph {owner.graph_id!r}: {'; '.join(visits)}. It is marked not safe "
        "to re-run: its side effect may or may not have happened, and continuing would run it again. Nothing was "
        "run. Check its side effect, then recover with allow_unsafe_rerun=True to run it again (or skip_node it "
        "with the output it should have given)"
    )
