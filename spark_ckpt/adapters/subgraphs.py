"""Spark ``SubgraphNode``s in a checkpointed graph: the inner graph's visits are journaled inside the
outer visit, so a crash inside a subgraph re-runs only the inner superstep that was in flight.

How it hooks in (no Spark code changes). Spark's ``SubgraphNode.process`` builds a fresh runtime graph
per execution (``_create_runtime_graph``: the factory's graph, or a deep copy of the template), points
it at the outer graph state (``share_state``), and awaits its ``run``. When the outer graph is wrapped,
each SubgraphNode *instance* gets ``_create_runtime_graph`` replaced (one instance attribute, as the
node wrappers do with ``do``): inside that node's checkpointed visit it returns the runtime graph
wrapped in a ``NestedGraph``, a ``CheckpointedGraph`` whose records do not go to a backend as an
execution of their own: each inner record, whole (inner journal, inner node states, inner graph
state), is stored as the outer visit's in-flight journal (``VisitContext.persist_inflight``, durable on
top of the outer boundary record, as an agent's LLM calls are). Spark's ``process`` itself (input and
output mapping, state and event-bus sharing) runs unchanged.

On recovery the outer visit of the SubgraphNode runs live (it was in flight), finds its in-flight
journal (``VisitContext.recovered_inflight``), and the inner run continues from that record: inner
graph and node state restored, the inner journal replayed, the first inner visit past it live.

Consistency rules (never silently wrong; each fallback re-runs the subgraph from its start, which is
faithful because the outer state was restored from the outer boundary record, and says why in
``last_recovery.subgraphs``):

* with ``share_state=True`` the inner graph state *is* the outer graph state. An inner record is only
  kept (stored, and used on recovery) when the SubgraphNode ran alone in its outer superstep: a sibling
  visit's partial effects would be in the inner snapshot and the sibling runs again on recovery;
* an inner record is used only for the same inner structure, the same inner input, and an inner graph
  without event edges (their published events are not journaled);
* inner records are taken at every inner superstep boundary, whatever the outer policy, so only the
  inner superstep in flight runs again; a failure is recorded by the outer visit, not by the inner run.

A marked node (``@not_safe_to_rerun``) of the inner graph marks the outer SubgraphNode visit before it
runs (``graph_unsafe_nodes``): recovering that outer visit is refused unless allowed.

Nested subgraphs work the same way one level down: an inner SubgraphNode's records are the inner
visit's in-flight journal, which travels inside the inner record.

``clone_spark_graph`` gives ``CheckpointedGraph.copy()`` (``SubgraphNode(graph=checkpointed(...))``
clones its template through it): the wrapped Spark graph deep-copied without the wrapper's parts.
"""

from __future__ import annotations

import copy
import logging
import types
from typing import Any

import attrs

from ..codec import from_data
from ..codec.convert import dumps_data, faithful_copy
from ..engine.journal import Journal
from ..engine.recovery import RecoveryReport
from ..model import FAILED, RUNNING, GraphCheckpoint, new_id
from .graph import CheckpointedGraph
from .graph_state import dump_run_input, restore_into_graph
from .runtime import current_visit

log = logging.getLogger("spark_ckpt.graph")

#: the key of an inner record in the outer visit's in-flight journal
INFLIGHT_KEY = "subgraph"
#: where nested runs' (never written) backend lives: their records go to the outer visit instead
NESTED_BACKEND = "memory://spark-ckpt-nested-subgraphs"
#: why an inner run starts from its start when no inner record was stored for its visit
NOTHING_COMPLETED = "no inner superstep had completed"
#: node attributes the wrappers replace (restored on clones: ``clone_spark_graph``)
_WRAPPED_ATTRS = ("do", "receive_from_parent", "_create_runtime_graph")


@attrs.define
class SubgraphRecovery:
    """What one subgraph visit that ran live during a recovery did (``RecoveryReport.subgraphs``)."""

    node_key: str
    visit_index: int
    #: the inner record the inner run continued from, or None: it ran from its start (``reason`` says why:
    #: ``NOTHING_COMPLETED``, or a rule of the module docstring)
    resumed_from: str | None
    reason: str | None
    #: the inner run's report: inner visits replayed and run live (and its own nested subgraphs)
    inner: RecoveryReport


def is_subgraph_node(node: Any) -> bool:
    from spark.graphs.graph import SubgraphNode

    return isinstance(node, SubgraphNode)


class SubgraphSupport:
    """The SubgraphNodes of one checkpointed graph (see the module docstring)."""

    def __init__(self, owner: CheckpointedGraph) -> None:
        from spark.graphs.hooks import GraphLifecycleEvent

        self.owner = owner
        #: how many visits the current outer superstep runs (Spark's BEFORE_ITERATION metadata)
        self.active_nodes = 1
        owner.graph.register_hook(GraphLifecycleEvent.BEFORE_ITERATION, self.before_superstep)

    def before_superstep(self, context: Any) -> None:
        self.active_nodes = (getattr(context, "metadata", None) or {}).get("active_nodes", 1)

    def wrap(self, node: Any, key: str) -> None:
        original = node._create_runtime_graph
        owner, support = self.owner, self

        def create_runtime_graph() -> Any:
            visit = current_visit()
            if visit is None or visit.node_key != key or visit.extras.get("graph") is not owner:
                return original()  # not inside this node's checkpointed visit: Spark's own behaviour
            graph, names = _runtime_spark_graph(node, original)
            return NestedGraph(graph, outer=owner, visit=visit, node_ids=names,
                               with_siblings=support.active_nodes > 1)

        create_runtime_graph.__wrapped__ = original  # type: ignore[attr-defined]
        node._create_runtime_graph = create_runtime_graph


def attach(owner: CheckpointedGraph, node: Any, key: str) -> None:
    """Called by ``CheckpointedGraph`` for each node it wraps: SubgraphNodes get journaled inner runs."""
    if not is_subgraph_node(node):
        return
    support = owner.__dict__.get("_subgraph_support")
    if support is None:
        support = owner.__dict__["_subgraph_support"] = SubgraphSupport(owner)
    support.wrap(node, key)


def _runtime_spark_graph(node: Any, create: Any) -> tuple[Any, dict[Any, str] | None]:
    """The runtime graph of one execution of ``node`` as a plain Spark graph (with the node keys of a
    checkpointed template, if it was one)."""
    template = getattr(node, "_graph_template", None)
    if getattr(node, "_graph_factory", None) is None and isinstance(template, CheckpointedGraph):
        return clone_spark_graph(template)  # not template.copy(): that opens its own backend
    graph = create()
    if isinstance(graph, CheckpointedGraph):  # a factory returning a wrapped graph: journaled here instead
        names = {node_: graph._keys[id(node_)] for node_ in graph._nodes_by_key.values()}
        graph.close()
        return graph.graph, names
    return graph, None


# -- the inner run -----------------------------------------------------------------------------------
class NestedGraph(CheckpointedGraph):
    """One execution of a SubgraphNode's runtime graph, journaled inside the outer visit."""

    def __init__(self, graph: Any, *, outer: CheckpointedGraph, visit: Any, node_ids: dict[Any, str] | None,
                 with_siblings: bool) -> None:
        config = attrs.evolve(
            outer.config, backend=NESTED_BACKEND, path=None, backend_options={}, strategy="iteration", policy_options={},
            interval=1, durability="sync", retention_count=None, retention_max_age_s=None, retention=(),
            unsafe_nodes=(),  # the outer graph's node keys; inner nodes are marked with @not_safe_to_rerun
        )
        super().__init__(graph, config, graph_id=f"{outer.graph_id}/{visit.node_key}", node_ids=node_ids,
                         worker_id=outer.worker_id)
        self.hooks = self._runner.hooks = outer.hooks  # plugins see inner visits through the outer's hooks
        self.outer = outer
        self.outer_visit = visit
        self.with_siblings = with_siblings
        self._recovered: dict[str, Any] | None = None

    async def run(self, inputs: Any = None) -> Any:
        runner, visit = self._runner, self.outer_visit
        shared = self.graph.state is self.outer.graph.state
        keep = not (shared and self.with_siblings)
        record, reason = self._inner_record(inputs, keep)
        if record is None:
            ex = runner.new_execution(new_id("ex-"), dump_run_input(inputs))
        else:
            # GraphRunner.resume, but the base record is data in the outer visit's in-flight journal
            restore_into_graph(self.graph, self._nodes_by_key, record, pending=False)
            ex = runner.new_execution(record.execution_id, record.run_input, next_seq=record.seq + 1,
                                      journal=Journal.resuming(record, same_execution=True))
            ex.builder.extras_stored = dict(record.node_extras)
        ex.builder.always_whole = True  # each inner record stands alone in the outer journal
        outer_ex = self.outer._runner.active
        ex.writer = OuterVisitWriter(visit, outer_ex.writer, ex.journal, keep=keep, ttl_s=self.config.lease_ttl_s,
                                     next_seq=ex.writer.next_seq, base=self._recovered if record is not None else None)
        if outer_ex.report is not None:  # a recovery: say what this subgraph visit did
            ex.report = self.last_recovery = RecoveryReport(
                execution_id=ex.execution_id, from_checkpoint=record.checkpoint_id if record is not None else None)
            outer_ex.report.subgraphs.append(SubgraphRecovery(
                visit.node_key, visit.visit_index, ex.report.from_checkpoint, reason, ex.report))
            if reason is not None and reason is not NOTHING_COMPLETED:
                log.warning("subgraph %s visit %d runs again from its start: %s", visit.node_key, visit.visit_index,
                            reason)
        return await runner.execute(ex, inputs, resumed=record is not None)

    def _inner_record(self, inputs: Any, keep: bool) -> tuple[GraphCheckpoint | None, str | None]:
        """The inner record to continue, or None and why the inner run starts from its start."""
        recovered = self.outer_visit.recovered_inflight
        data = recovered.get(INFLIGHT_KEY) if isinstance(recovered, dict) else None
        self._recovered = data
        if not keep:
            return None, (f"it shares graph state with the sibling visits of {self.outer_visit.node_key!r}'s "
                          "superstep, which run again too (its inner records are not kept)")
        if data is None:
            return None, NOTHING_COMPLETED
        if self._event_edges:
            return None, "the inner graph has event edges, whose published events are not journaled"
        record = from_data(data, GraphCheckpoint)
        if record.extras.get("structure") != self.structure:
            return None, "the inner graph's structure changed since its record was stored"
        if _stored_form(record.run_input) != _stored_form(dump_run_input(inputs)):
            return None, "the subgraph was given another input than the one its record was stored for"
        return record, None


def _stored_form(value: Any) -> bytes:
    return dumps_data(value, what="subgraph input")


class OuterVisitWriter:
    """The record writer of a nested run: its records go to the outer visit's in-flight journal
    (``persist_inflight``), the outer execution's lease guards its live visits.

    Stores the boundary records (whole), each with the inner journals in flight (an inner agent's
    calls, an inner subgraph's record); keeps the start record without storing it (it holds nothing a
    run from the start would not do) and never a failure record (the outer visit records the failure).
    """

    def __init__(self, visit: Any, outer_writer: Any, journal: Journal, *, keep: bool, ttl_s: float,
                 next_seq: int, base: dict[str, Any] | None) -> None:
        self.visit = visit
        self.outer = outer_writer
        self.journal = journal
        self.keep = keep  # False: nothing is stored (a recovery would not use it)
        self.ttl_s = ttl_s
        self.on_stored = None
        self.next_seq = self.first_seq = next_seq
        #: the last boundary record, as plain data
        self.boundary = base
        self.last_status = RUNNING if base is not None else None
        self.last_seq = base["seq"] if base is not None else None

    # the outer execution's lease (renewed by the outer run)
    @property
    def lease(self) -> Any:
        return self.outer.lease

    @property
    def fenced(self) -> Any:
        return self.outer.fenced

    @property
    def lease_deadline(self) -> float:
        return self.outer.lease_deadline

    async def check_lease(self) -> None:
        await self.outer.check_lease()

    async def acquire(self, execution_id: str) -> None:
        return None

    async def renew(self) -> None:
        return None

    async def release(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    @property
    def written(self) -> int:
        return self.next_seq - self.first_seq

    @property
    def last_blob(self) -> bytes | None:
        return b"boundary" if self.boundary is not None else None

    def base_data(self) -> dict[str, Any]:
        return faithful_copy(self.boundary, what="subgraph record")

    async def store(self, data: dict[str, Any], *, wait: bool) -> None:
        self.next_seq = data["seq"] + 1
        status = data["status"]
        if status == FAILED:
            return
        on_boundary = data.get("base_seq") is not None
        if not on_boundary:
            self.boundary = faithful_copy(data, what="subgraph record")
            self.last_status, self.last_seq = status, data["seq"]
        if not self.keep or self.boundary is None:
            return
        inflight = self.journal.inflight
        if not self.boundary["execution_history"] and not inflight:
            return  # the start record: recovering from it is running from the start
        record = dict(self.boundary)
        record["inflight"] = faithful_copy(inflight, what="subgraph in-flight journal")
        await self.visit.persist_inflight({INFLIGHT_KEY: record})


# -- cloning a wrapped graph ---------------------------------------------------------------------------
def deepcopy_spark_graph(owner: CheckpointedGraph, memo: dict[int, Any] | None = None) -> Any:
    """The wrapped Spark graph's own ``__deepcopy__`` (an instance attribute set when it is wrapped):
    ``copy.deepcopy(graph)``, e.g. by a ``SubgraphNode`` whose template is a graph wrapped elsewhere,
    gives the bare graph's copy, not one holding the wrapper (its backend, locks) and node wrappers that
    would run the template's nodes."""
    return clone_spark_graph(owner, memo)[0]


def clone_spark_graph(owner: CheckpointedGraph, memo: dict[int, Any] | None = None) -> tuple[Any, dict[Any, str]]:
    """A deep copy of ``owner``'s Spark graph without what the wrapper attached (node wrappers, its
    lifecycle hooks, markers), and its node keys (``{clone node: key}``). Spark deep-copies a
    SubgraphNode's template per execution; copying the wrapper's backend, runner and hooks with it
    would be wrong, and the copied node wrappers would still run the template's nodes."""
    from ..plugins import get_plugin_manager

    support = owner.__dict__.get("_subgraph_support")
    runner = owner._runner
    shared = [owner, runner, runner.visits, owner.hooks, getattr(owner.hooks, "pm", None), owner.backend,
              get_plugin_manager(), support]
    shared = [obj for obj in shared if obj is not None]
    memo = {} if memo is None else memo
    memo.update({id(obj): obj for obj in shared})  # kept as they are, never copied
    own = owner.graph.__dict__.pop("__deepcopy__", None)  # else copy.deepcopy would call it again
    try:
        clone = copy.deepcopy(owner.graph, memo)
    finally:
        if own is not None:
            owner.graph.__dict__["__deepcopy__"] = own
    ours = {id(obj) for obj in shared}
    for event, handlers in list(getattr(clone, "_lifecycle_hooks", {}).items()):
        clone._lifecycle_hooks[event] = [h for h in handlers if id(getattr(h, "__self__", None)) not in ours]
    names: dict[Any, str] = {}
    for key, node in owner._nodes_by_key.items():
        twin = memo.get(id(node))
        if twin is None:
            continue
        names[twin] = key
        twin.__dict__.pop("_spark_ckpt_wrapped", None)
        for attr in _WRAPPED_ATTRS:
            wrapper = node.__dict__.get(attr)
            if wrapper is None or twin.__dict__.get(attr) is not wrapper or not hasattr(wrapper, "__wrapped__"):
                continue
            original = wrapper.__wrapped__
            if (isinstance(original, types.MethodType) and original.__self__ is node
                    and getattr(type(node), attr, None) is original.__func__):
                del twin.__dict__[attr]  # the class's own method again
            else:
                twin.__dict__[attr] = copy.deepcopy(original, memo)  # as a bare deep copy would have it
    return clone, names
