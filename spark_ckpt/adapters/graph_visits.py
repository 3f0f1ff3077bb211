"""Node visits of a checkpointed Spark graph: each node *instance*'s ``do`` (and, for a node with two
parents or more, ``receive_from_parent``) replaced by a wrapper, as Spark's own retry and timeout
policies do. No Spark code changes.

A visit is journaled live, replayed from the journal (its recorded output, ``process()`` not called),
or skipped (``skip_node``). Invariants of the wrapper:

* inside the replayed supersteps every visit replays: one the journal does not hold, or whose input
  is not the one it consumed when journaled, raises ``RecoveryDivergedError`` before it runs;
* no live visit starts once the lease is lost (a stalled worker stops), nor once it is due without
  being renewed first;
* a live visit's entry is journaled only after ``do`` returned; a failing one fires ``on_failure``
  and is recorded as the execution's failure.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ..engine.deliveries import diverged
from ..events import FailureEvent, NodeEvent
from ..model import FailureInfo, Visit
from . import graph_unsafe_nodes
from .graph_events import republish
from .graph_state import dump_message, load_message, plain_or_repr
from .runtime import LazyVisit, VisitContext, _current_visit

if TYPE_CHECKING:
    from .graph_run import Execution, GraphRunner


class NodeVisits:
    """Wraps the nodes of one graph for one runner (see the module docstring)."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner

    def wrap(self, node: Any, key: str, fan_in: bool) -> None:
        node.do = self._do_wrapper(node, key, node.do)
        if fan_in:
            node.receive_from_parent = self._receive_wrapper(node, key, node.receive_from_parent)

    def _receive_wrapper(self, node: Any, key: str, original_receive: Any) -> Any:
        """Spark delivers a parent's output to ``node`` through ``receive_from_parent``: note which
        visit the appended input came from (``Deliveries``)."""
        runner, keys = self.runner, self.runner.keys

        async def receive_from_parent(parent: Any, *args: Any, **kwargs: Any) -> Any:
            ex = runner.active
            state = getattr(node, "_state", None)
            queue = state.get("pending_inputs") if isinstance(state, dict) else None
            before = len(queue) if ex is not None and queue is not None else -1
            result = await original_receive(parent, *args, **kwargs)
            if before >= 0 and len(queue) == before + 1:
                parent_key = keys.get(id(parent))
                if parent_key is not None:
                    journal = ex.journal
                    journal.deliveries.delivered(key, queue[-1], [parent_key, journal.counts.get(parent_key, 1) - 1])
            return result

        receive_from_parent.__wrapped__ = original_receive  # type: ignore[attr-defined]
        receive_from_parent.spark_ckpt_delivery = True  # type: ignore[attr-defined]  (``graph_frontier``)
        return receive_from_parent

    def _do_wrapper(self, node: Any, key: str, original_do: Any) -> Any:
        runner = self.runner
        keys = runner.keys
        successors = {keys[id(e.to_node)] for e in getattr(node, "edges", ()) if id(e.to_node) in keys}
        visit_context = self._visit_context
        timed_edges = runner.timed_edges  # or event edges: matched by visit, not by superstep
        # not safe to re-run: a marker is stored before each live visit (``graph_unsafe_nodes``); a
        # SubgraphNode's visit is tracked too (its inner marked nodes mark it)
        unsafe = key in runner.owner._unsafe_keys
        tracked = unsafe or bool(getattr(node, "_create_runtime_graph", None))

        async def do(inputs: Any = None) -> Any:
            ex = runner.active
            if ex is None:
                return await original_do(inputs)
            journal = ex.journal
            index = journal.counts.get(key, 0)
            journal.counts[key] = index + 1
            dirty = ex.builder.dirty
            if dirty is not None:
                dirty.add(key)
                dirty.update(successors)
            origin = journal.deliveries.consumed(key, inputs)
            if journal.replay:
                recorded = journal.replay.pop((key, index), None)
                if recorded is not None:
                    if recorded.input_from is not None and recorded.input_from != origin:
                        inputs = self._recorded_input(ex, node, key, index, inputs, origin, recorded)
                    return await self._replay_visit(ex, node, key, index, inputs, recorded)
            if ex.superstep <= journal.resumed_through and not timed_edges:  # not in the journal, inside its supersteps
                raise diverged(key, f"visit {index} in superstep {ex.superstep} is not in the journal")
            writer = ex.writer
            if writer.fenced is not None or time.monotonic() >= writer.lease_deadline:
                await writer.check_lease()  # before any live work: a stalled worker stops here
            if ex.skip and key in ex.skip:
                return await self._skip_visit(ex, node, key, index, inputs, origin)
            # a live visit (inline: this runs once per node visit)
            token = _current_visit.set(LazyVisit(visit_context, ex, key, index))
            started = time.time()
            t0 = time.perf_counter()
            try:
                try:
                    if ex.node_hooks:  # (inside: an error a hook raises into the run fails this visit)
                        await runner.hooks.pre_node(NodeEvent(runner.graph_id, ex.execution_id, key, index,
                                                              ex.superstep, node, inputs))
                    if unsafe:  # stored before it starts: a crash inside it is then known (graph_unsafe_nodes)
                        await graph_unsafe_nodes.record_started(
                            runner, ex, graph_unsafe_nodes.marker(key, index, ex.superstep, inputs))
                    output = await original_do(inputs)
                except BaseException as exc:
                    journal.published.pop((key, index), None)  # its superstep runs again and publishes again
                    await self._visit_failed(ex, node, key, index, inputs, exc)
                    raise
                duration = time.perf_counter() - t0
                # (``status`` left at its default, "completed"; the duration to 0.1 us: bytes in every record)
                entry = {"node_key": key, "index": index, "superstep": ex.superstep,
                         "output": ex.dumps.dump(output), "started_at": started, "duration_s": round(duration, 7)}
                if origin is not None:
                    entry["input_from"] = origin
                if journal.published:
                    events = journal.published.pop((key, index), None)
                    if events:
                        entry["events"] = events
                journal.completed(entry)
                if tracked:
                    graph_unsafe_nodes.visit_completed(ex, key, index)
                if ex.report is not None:
                    ex.report.live.append((key, index))
                observe = runner.policy_sees_visits
                if ex.node_hooks or observe is not None:
                    event = NodeEvent(runner.graph_id, ex.execution_id, key, index, ex.superstep, node, inputs, output,
                                      duration_s=duration)
                    if observe is not None:  # the policy sees live visits only (``spark_ckpt.policies``)
                        observe(event)
                    if ex.node_hooks:
                        await runner.hooks.post_node(event)
                return output
            finally:
                # Spark nests every previous context snapshot into the next one (cost and recursion grow
                # per visit); nothing reads it, so drop it after each visit.
                state = getattr(node, "_state", None)
                if isinstance(state, dict):
                    state["context_snapshot"] = None
                _current_visit.reset(token)

        do.__wrapped__ = original_do  # type: ignore[attr-defined]
        return do

    @staticmethod
    def _recorded_input(ex: Execution, node: Any, key: str, index: int, inputs: Any, origin: Any, recorded: Visit) -> Any:
        """The input a replayed visit consumed when it was journaled, when this process handed it another
        one (siblings delivered in another order): taken from the node's pending inputs, the one it was
        handed put back in its place. ``RecoveryDivergedError`` if no pending input is that one."""
        queue = node._state.get("pending_inputs")
        taken = ex.journal.deliveries.take(key, queue, inputs, origin, recorded.input_from) if queue is not None else None
        if taken is not None:
            return taken
        if origin is None:
            return inputs  # handed an input delivered some other way: cannot tell, keep the journal's order
        raise diverged(key, f"visit {index} consumed the output of {recorded.input_from} when it was journaled, "
                            f"but that input is not waiting here (this process delivered {origin})")

    async def _visit_failed(self, ex: Execution, node: Any, key: str, index: int, inputs: Any, exc: BaseException) -> None:
        runner = self.runner
        if ex.failure is None:  # the first failure of the superstep is the one the caller sees
            ex.failure = FailureInfo(key, index, type(exc).__name__, str(exc), plain_or_repr(dump_message(inputs)))
        await runner.hooks.on_failure(FailureEvent(
            runner.graph_id, ex.execution_id, key, exc, type(exc).__name__, str(exc), node, inputs,
        ))

    def _visit_context(self, ex: Execution, key: str, index: int) -> VisitContext:
        runner = self.runner
        recovered = ex.journal.inflight_recovered.get(key)
        if recovered is not None and recovered.get("visit_index") == index:
            recovered_data = recovered.get("data")
        else:
            recovered_data = None

        async def persist_inflight(data: Any) -> None:
            await runner.persist_inflight(ex, key, index, data)

        return VisitContext(
            graph_id=runner.graph_id, execution_id=ex.execution_id, node_key=key, visit_index=index,
            superstep=ex.superstep, backend=runner.backend, codec=runner.codec, hooks=runner.hooks,
            config=runner.config, lease=ex.writer.lease,
            recovered_inflight=recovered_data, persist_inflight=persist_inflight,
            extras={"graph": runner.owner, "allow_unsafe_rerun": ex.allow_unsafe_rerun},
        )

    async def _replay_visit(self, ex: Execution, node: Any, key: str, index: int, inputs: Any, visit: Visit) -> Any:
        runner = self.runner
        if visit.events:  # published inside process(), before the visit returned: published again here
            await republish(runner.graph, visit.events)
        output = load_message(visit.output)
        node.outputs = output
        ex.journal.replayed(visit)
        if ex.report is not None:
            (ex.report.skipped if visit.status == "skipped" else ex.report.replayed).append((key, index))
        event = NodeEvent(runner.graph_id, ex.execution_id, key, index, ex.superstep, node, inputs, output, replayed=True)
        await runner.hooks.pre_node(attrs.evolve(event, output=None))
        await runner.hooks.post_node(event)
        return output

    @staticmethod
    async def _skip_visit(ex: Execution, node: Any, key: str, index: int, inputs: Any, origin: Any) -> Any:
        override = ex.skip.pop(key)
        output = inputs if override is None else load_message(override)
        if not hasattr(output, "model_dump"):
            output = load_message({"content": output})
        node.outputs = output
        ex.journal.replayed(Visit(key, index, ex.superstep, dump_message(output), "skipped", time.time(), 0.0, origin))
        graph_unsafe_nodes.visit_completed(ex, key, index)  # (a recovered marker of the node, if any)
        if ex.report is not None:
            ex.report.skipped.append((key, index))
        return output
