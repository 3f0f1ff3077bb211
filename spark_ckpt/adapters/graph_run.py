"""Running a checkpointed Spark graph: Spark's own loop (``graph.run``) with a record at superstep
boundaries (the ``AFTER_ITERATION`` lifecycle hook), a start record before it, a final one after it
and a failure record when it fails; and continuing an execution from a record (recovery, forks).

An ``Execution`` is one execution as this process runs it. Its parts own their fields: the journal
(``engine.journal``), the record builder (``engine.record_builder``), the record writer with the lease
(``engine.store_path``); what remains here is the run's own (the superstep, the policy's counters,
skips, the report, the failure).

Invariants:

* records are built at superstep boundaries only, so the journal a record holds covers whole
  supersteps; inside the replayed supersteps no record is built (the state is the resumed one's);
* at the end of the replayed part, before anything runs live, every journaled visit was replayed and
  the pending inputs are back in the order the resumed record stored them, or the run stops with
  ``RecoveryDivergedError`` (graphs with timer edges are matched by visit only);
* a failure is recorded on the last boundary stored, never after a lost lease or a divergent replay
  (nothing live ran: the stored records are right as they are).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs

from ..backends.leases import release_quietly
from ..codec import to_data
from ..engine import record_builder
from ..engine.attempts import first_attempt, next_attempt
from ..engine.deliveries import diverged
from ..engine.frontier import Frontier
from ..engine.journal import Journal
from ..engine.record_builder import RecordBuilder
from ..engine.recovery import RecoveryReport
from ..engine.store_path import LeaseRenewer, RecordWriter, RetentionSchedule
from ..errors import (
    DuplicateCheckpointError, LeaseError, RecoveryDivergedError, SparkCkptError, UnrecoverableExecutionError,
)
from ..events import CheckpointDecision, CheckpointSaved, RunEvent
from ..model import COMPLETED, FAILED, RUNNING, FailureInfo, GraphCheckpoint, Lease, new_id
from . import graph_frontier, graph_human_input, graph_state
from .graph_events import journal_published_events
from .graph_gates import ApprovalGates, is_approval_pending
from .graph_state import MessageDumps, SparkGraphState, dump_message, load_run_input, restore_into_graph
from .graph_visits import NodeVisits
from .runtime import _current_visit, node_state_adapter_for

if TYPE_CHECKING:
    from .graph import CheckpointedGraph

log = logging.getLogger("spark_ckpt.graph")


class _OwnHookErrors(logging.Filter):
    """Spark logs an exception raised by a lifecycle hook, traceback and all, then re-raises it. An
    error spark-ckpt raises from its superstep hook on purpose (an ``EncodeError``, a lost lease)
    reaches the caller anyway, so that log printed its traceback a second time: it is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        handler = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else None
        return not (isinstance(error, SparkCkptError) and isinstance(getattr(handler, "__self__", None), GraphRunner))


def quiet_spark_hook_log() -> None:
    """Install ``_OwnHookErrors`` on Spark's graph logger (once per process)."""
    spark_log = logging.getLogger("spark.graphs.graph")
    if not any(isinstance(f, _OwnHookErrors) for f in spark_log.filters):
        spark_log.addFilter(_OwnHookErrors())


@attrs.define
class Execution:
    """One execution as this process runs it (see the module docstring)."""

    execution_id: str
    run_input: Any
    journal: Journal
    builder: RecordBuilder
    writer: RecordWriter
    dumps: MessageDumps
    superstep: int = 0
    #: node key -> dumped output to use on its next visit (None: pass its input through)
    skip: dict[str, Any] = attrs.field(factory=dict)
    supersteps_since: int = 0
    last_checkpoint_at: float = 0.0
    checkpoint_requested: str | None = None
    #: the final (completed) record was built (it may still be on its way to the store)
    completed: bool = False
    #: a forked execution's source record (its start record is that record, under this execution)
    fork_of: GraphCheckpoint | None = None
    report: RecoveryReport | None = None
    failure: FailureInfo | None = None
    allow_unsafe_rerun: bool = False
    #: the restore point (``create_checkpoint()``) the run was started after, named in its start record,
    #: so the guide's restore -> continue_from_checkpoint finds this run (``graph_checkpoints``)
    restore_point: str | None = None
    #: the graph's event bus while it runs, and the visit (a ``LazyVisit``) this execution runs inside
    #: (a subgraph's outer visit), for events published on a shared bus (``graph_events``)
    event_bus: Any = None
    parent_visit: Any = None
    #: which optional hooks have implementations, read once per run (a plugin registered while a
    #: run is going takes effect from the next run)
    node_hooks: bool = False
    policy_hooks: bool = False
    #: named by the caller (``run(execution_id=...)``): it must be new in the store when its lease is taken
    named: bool = False
    #: continued from a record's frontier (``graph_frontier``): the node Spark's loop starts at, and
    #: the superstep Spark's first iteration is (Spark counts its iterations from 0 every run)
    start_at: Any = None
    first_superstep: int = 0


class GraphRunner:
    """Runs and continues the executions of one checkpointed graph (see the module docstring)."""

    def __init__(self, owner: CheckpointedGraph) -> None:
        self.owner = owner
        self.graph = owner.graph
        self.config = owner.config
        self.backend = owner.backend
        self.codec = owner.codec
        self.hooks = owner.hooks
        self.policy = policy = owner.policy
        self._policy_due = getattr(policy, "due", None)
        # the optional parts of a policy (``spark_ckpt.policies``), looked up once
        bind = getattr(policy, "bind", None)
        if bind is not None:
            bind(owner._nodes_by_key)
        self._policy_reset = getattr(policy, "reset", None)
        self._policy_sees_checkpoints = getattr(policy, "observe_checkpoint", None)
        #: the policy's ``observe_visit``, given each live visit (``graph_visits``), or None
        self.policy_sees_visits = getattr(policy, "observe_visit", None)
        self.graph_id = owner.graph_id
        self.keys = owner._keys
        self.nodes = owner._nodes_by_key
        #: timer or event edges deliver by wall-clock time or by an event worker, so a visit may replay
        #: in another superstep than it ran in: replay is matched by visit there, not by superstep
        self.timed_edges = owner._timed_edges or owner._event_edges
        self.state = SparkGraphState(self.graph)
        self.retention = RetentionSchedule(self.config, owner.retention_rules)
        self.visits = NodeVisits(self)
        self.gates = ApprovalGates(self)
        self.active: Execution | None = None
        #: the execution the last run or continuation of this graph ran (``run_with_recovery`` follows it)
        self.last_execution_id: str | None = None
        #: the last execution ``take_up`` was given, even one refused there (a named run that lost a race)
        self.last_started: Execution | None = None
        #: NodeMessage dumps of the outputs the nodes held when the last run ended
        self._carried: dict[int, tuple[Any, Any]] = {}
        quiet_spark_hook_log()

    def new_execution(
        self, execution_id: str, run_input: Any, *, next_seq: int = 0, lease: Lease | None = None,
        journal: Journal | None = None, fork_of: GraphCheckpoint | None = None,
    ) -> Execution:
        owner, dumps = self.owner, MessageDumps()
        journal = journal or Journal()

        # one reader per node, its constants bound once per execution (read at every boundary it is dirty)
        readers = {
            key: functools.partial(
                graph_state.node_entry, node, dumps, adapter_node=key in owner._adapter_keys,
                origins=functools.partial(journal.deliveries.origins, key) if key in owner._fan_in else None)
            for key, node in self.nodes.items()
        }

        def snapshot_adapter(key: str) -> Any:
            node = self.nodes[key]
            return node_state_adapter_for(node).snapshot(node)

        writer = RecordWriter(self.backend, self.codec, durability=self.config.durability, owner=owner.worker_id,
                              ttl_s=self.config.lease_ttl_s, next_seq=next_seq, lease=lease)
        builder = RecordBuilder(
            execution_id=execution_id, graph_id=self.graph_id, graph_version=owner.graph_version,
            structure=owner.structure, json_records=self.codec.takes_json_fragments,
            always_whole=self.config.durability == "exit", node_order=owner._node_order,
            adapter_keys=[k for k in self.nodes if k in owner._adapter_keys], readers=readers,
            snapshot_adapter=snapshot_adapter, values_apart=writer.values_apart,
        )
        writer.attempt = first_attempt(owner.worker_id, fork_of=fork_of.checkpoint_id if fork_of else None)
        return Execution(execution_id, run_input, journal, builder, writer, dumps, fork_of=fork_of)

    # -- a run ----------------------------------------------------------------------------------------
    async def execute(self, ex: Execution, inputs: Any, *, resumed: bool) -> Any:
        self.gates.prepare_run()  # both refuse what they cannot journal before anything is stored
        graph_human_input.prepare_run(self)
        renewer = await self.take_up(ex, resumed=resumed)
        writer = ex.writer
        journal_published_events(self.graph)
        ex.event_bus, ex.parent_visit = getattr(self.graph, "event_bus", None), _current_visit.get()
        ex.dumps.cache.update(self._carried)
        hooks = self.hooks
        ex.node_hooks, ex.policy_hooks = hooks.wants_node_events, hooks.wants_should_checkpoint
        run_event = self._run_event(ex, resumed) if hooks.wants_run_events else None
        try:
            if run_event is not None:
                await hooks.run_started(run_event)
            if ex.fork_of is not None:
                await self.store(ex, ex.builder.fork_start(ex.fork_of, seq=writer.next_seq, inflight=ex.journal.inflight,
                                                           skip=ex.skip), wait=self.config.durability == "sync")
            elif not resumed:
                await self.checkpoint(ex, status=RUNNING)
            elif ex.skip:  # skip requests are stored before anything runs, so a crash keeps them
                await self.store(ex, self.on_boundary(ex), wait=True)
            if ex.start_at is None:
                result = await self.graph.run(inputs)
            else:
                with graph_frontier.started_at(self.graph, ex.start_at):
                    result = await self.graph.run(inputs)
        except BaseException as exc:
            if is_approval_pending(exc):
                await self.gates.record_waiting(ex, exc)
            else:
                await self._record_failure(ex, exc)
            raise
        else:
            await self._finish(ex, result)
            return result
        finally:
            self._carried = ex.dumps.held_by(self.nodes.values())
            try:
                if run_event is not None:
                    await self._run_ended(run_event, sys.exc_info()[1])
            finally:  # a fault injector's exception from run_ended still leaves the lease released
                await self.put_down(ex, renewer)

    def _run_event(self, ex: Execution, resumed: bool) -> RunEvent:
        fork_of = ex.fork_of.checkpoint_id if ex.fork_of is not None else None
        return RunEvent(self.graph_id, ex.execution_id, self.graph, resumed=resumed, recovery=ex.report,
                        fork_of=fork_of)

    async def _run_ended(self, event: RunEvent, error: BaseException | None) -> None:
        status = "completed" if error is None else "waiting" if is_approval_pending(error) else "failed"
        await self.hooks.run_ended(attrs.evolve(event, status=status, error=error))

    async def take_up(self, ex: Execution, *, resumed: bool) -> LeaseRenewer:
        """Make ``ex`` this graph's running execution, under its lease (renewed from now on by the
        renewer returned); ``put_down`` ends it. Any execution mode's driver runs between the two."""
        if self.active is not None:
            raise SparkCkptError(
                f"graph {self.graph_id!r} is already running execution {self.active.execution_id}; "
                "a CheckpointedGraph runs one execution at a time (wrap another graph instance for parallel runs)"
            )
        writer = ex.writer
        self.last_started = ex
        # The start record lets a crash in the very first superstep be recovered. Written at once
        # (durability "sync"), it goes to the store with the lease, in one transaction where it can.
        if writer.lease is not None:  # taken by recovery a while ago (reads since): renewed before anything runs
            await writer.renew()
        elif resumed or self.config.durability != "sync":
            await writer.acquire(ex.execution_id)
            if ex.named and not resumed:
                await self._refuse_if_stored(ex)
        self.active = ex
        self.last_execution_id = ex.execution_id
        if self._policy_reset is not None:
            self._policy_reset()  # counts since the last checkpoint: from the record taken up (or the start)
        if self.hooks.wants_post_checkpoint or self._policy_sees_checkpoints is not None:
            writer.on_stored = self._post_checkpoint
        return LeaseRenewer(writer)

    async def _refuse_if_stored(self, ex: Execution) -> None:
        """A named run whose start record is written later (durability "async"/"exit"): under its lease,
        the name must still be new, or a worker that started it meanwhile would be run beside."""
        if await self.backend.aexecution_head(ex.execution_id) is not None:
            await ex.writer.release()
            raise DuplicateCheckpointError(f"execution {ex.execution_id} was stored by another worker")

    async def put_down(self, ex: Execution, renewer: LeaseRenewer) -> None:
        renewer.stop()
        self.active = None
        graph_state.drop_context_snapshots(self.nodes.values())
        if ex.writer.last_status != COMPLETED:
            # A completed execution is never recovered, so its lease needs no release (one write
            # fewer per run); an unfinished one is released so another worker can take it over now.
            await ex.writer.release()

    async def _finish(self, ex: Execution, result: Any) -> None:
        unreached = ex.journal.unreached()
        if unreached:  # the graph ended inside the replayed part: it routed differently, nothing ran live
            count, (key, index) = unreached
            raise diverged(key, f"the run ended with {count} journaled visit(s) not reached, the first {key}#{index}")
        if not ex.completed:
            await self.checkpoint(ex, status=COMPLETED, result=result)
        await ex.writer.flush()
        if ex.skip and ex.report is not None:
            ex.report.unused_skips = list(ex.skip)
            log.warning("skip_node(%s) was not used: that node had no further visit in execution %s",
                        ", ".join(ex.skip), ex.execution_id)
        self.retention.after_run(self.backend, self.graph_id, ex.writer.written, self.owner._rebase)

    async def _record_failure(self, ex: Execution, exc: BaseException) -> None:
        """Store a failed-status record on the last boundary stored; never masks ``exc``."""
        writer = ex.writer
        try:
            if ex.failure is None:  # failed outside a node visit (a hook, the backend, cancellation)
                ex.failure = FailureInfo(node_key="", index=-1, error_type=type(exc).__name__, error=str(exc))
            try:
                await writer.flush()  # what is held or running is stored first, or known lost
            except Exception:
                log.warning("a checkpoint of execution %s could not be stored", ex.execution_id, exc_info=True)
            # Not after a lost lease (another worker owns the execution) or a divergent replay (nothing
            # ran live: the stored records are right as they are).
            if writer.last_blob is not None and not isinstance(exc, (LeaseError, RecoveryDivergedError)):
                # Same state as the last boundary stored (the failing superstep's effects are not kept).
                await self.store(ex, self.on_boundary(ex, status=FAILED, failure=to_data(ex.failure)), wait=True)
            await writer.flush()
        except BaseException:
            log.exception("could not record the failure of execution %s", ex.execution_id)

    # -- superstep boundaries -------------------------------------------------------------------------
    async def after_superstep(self, context: Any) -> None:
        """At each superstep boundary (the only lifecycle hook used). Runs once per superstep, so it is
        kept flat: one coroutine from here to the backend's put on the common path."""
        ex = self.active
        if ex is None:
            return
        superstep = ex.superstep = context.iteration_index + ex.first_superstep
        try:
            ex.supersteps_since += 1
            journal = ex.journal
            if journal.replay or superstep <= journal.resumed_through:
                # still inside the replayed part: the state is the resumed record's, already stored
                ex.supersteps_since = 0
                if superstep >= journal.resumed_through and not self.timed_edges:
                    self._enter_live_part(ex)
                return
            if context.metadata.get("scheduled_successors", 1) == 0 and not self._graph_has_pending_work():
                if ex.policy_hooks or self._policy_due is None:
                    await self._ask_policy(ex, "final")  # they see it; the final record is taken regardless
                await self.checkpoint(ex, status=COMPLETED, result=context.last_output)
                return
            if ex.checkpoint_requested:
                wanted = await self._ask_policy(ex, "explicit")
            elif ex.policy_hooks or self._policy_due is None:
                wanted = await self._ask_policy(ex, "superstep")
            else:  # the common boundary: asked without building a decision object
                wanted = self._policy_due(ex.supersteps_since, time.monotonic() - ex.last_checkpoint_at)
            # a visit not safe to re-run that completed is made durable at this boundary, whatever the policy
            if wanted or (journal.unsafe is not None and journal.unsafe.awaiting(journal.persisted)):
                await self.checkpoint(ex, status=RUNNING)
        finally:
            ex.superstep = superstep + 1  # the visits that follow belong to the next one

    def _enter_live_part(self, ex: Execution) -> None:
        """At the end of the replayed part, before anything runs live (see the module docstring)."""
        journal = ex.journal
        unreached = journal.unreached()
        if unreached:
            count, (key, index) = unreached
            raise diverged(key, f"{count} journaled visit(s) were not reached, the first {key}#{index}")
        frontier, journal.frontier = journal.frontier, None
        for key, stored in (frontier or {}).items():
            node = self.nodes.get(key)
            queue = getattr(node, "_state", {}).get("pending_inputs") if node is not None else None
            if queue is not None:
                journal.deliveries.reorder(key, queue, stored)

    async def _ask_policy(self, ex: Execution, reason: str) -> bool:
        decision = CheckpointDecision(
            graph_id=self.graph_id, execution_id=ex.execution_id, reason=reason, superstep=ex.superstep,
            supersteps_since_last=ex.supersteps_since, seconds_since_last=time.monotonic() - ex.last_checkpoint_at,
            strategy=self.config.strategy, interval=self.config.interval,
        )
        wanted = await self.hooks.should_checkpoint(decision) if ex.policy_hooks else None
        return self.policy.should_checkpoint(decision) if wanted is None else wanted

    def _graph_has_pending_work(self) -> bool:
        graph = self.graph
        try:
            return bool(graph._has_pending_delay_tasks() or not graph._delayed_ready.empty()
                        or graph._has_pending_event_messages())
        except AttributeError:  # pragma: no cover - other Spark versions: assume not final
            return True

    # -- records ------------------------------------------------------------------------------------
    async def checkpoint(self, ex: Execution, *, status: str, result: Any = None) -> None:
        data = ex.builder.build(
            self.state, seq=ex.writer.next_seq, status=status, superstep=ex.superstep, journal=ex.journal,
            run_input=ex.run_input, skip=ex.skip, checkpoint_id=ex.checkpoint_requested,
            result=dump_message(result) if result is not None else None,
        )
        if ex.restore_point is not None and data["seq"] == 0:
            data["extras"]["restore_point"] = ex.restore_point
        ex.completed = ex.completed or status == COMPLETED
        ex.checkpoint_requested = None
        ex.supersteps_since = 0
        ex.last_checkpoint_at = time.monotonic()
        if self._policy_reset is not None:
            self._policy_reset()
        await self.store(ex, data, wait=self.config.durability == "sync")

    async def store(self, ex: Execution, data: dict[str, Any], *, wait: bool) -> None:
        await ex.writer.store(data, wait=wait)
        ex.journal.stored(data["history_start"] + len(data["execution_history"]))

    def on_boundary(self, ex: Execution, **changes: Any) -> dict[str, Any]:
        """A record on top of the last boundary stored, with ``changes`` (``RecordBuilder.on_boundary``);
        the journals in flight go whole unless ``changes`` hold them (as deltas)."""
        writer = ex.writer
        changes.setdefault("inflight", ex.journal.inflight)
        data = ex.builder.on_boundary(writer.base_data(), seq=writer.next_seq, base_seq=writer.last_seq,
                                      skip=ex.skip, **changes)
        if ex.journal.unsafe is not None:  # started visits not safe to re-run, not yet in a stored boundary
            ex.journal.unsafe.carry(data)
        return data

    async def persist_inflight(self, ex: Execution, key: str, index: int, data: Any) -> None:
        """Durably store a running visit's journal (agent calls) on top of the last boundary record."""
        ex.journal.inflight[key] = {"visit_index": index, "data": data}
        await ex.writer.flush()  # the boundary it goes on is stored first
        if ex.writer.last_blob is None:
            return
        whole_every = record_builder.FULL_HISTORY_EVERY
        await self.store(ex, self.on_boundary(ex, inflight=ex.journal.inflight_fields(whole_every)), wait=True)

    async def _post_checkpoint(self, header: Any, duration_s: float) -> None:
        event = CheckpointSaved(header=header, backend=self.backend.describe(), duration_s=duration_s, size=header.size)
        if self._policy_sees_checkpoints is not None:
            self._policy_sees_checkpoints(event)
        await self.hooks.post_checkpoint(event)

    def request_checkpoint(self) -> str:
        ex = self.active
        if ex is None:
            raise SparkCkptError("no checkpointed run is active")
        if ex.checkpoint_requested is None:
            ex.checkpoint_requested = new_id("ck-")
        return ex.checkpoint_requested

    # -- continuing ---------------------------------------------------------------------------------
    async def resume(
        self, record: GraphCheckpoint, *, same_execution: bool, fell_back: list[str], skips: dict[str, Any],
        lease: Lease | None = None, next_seq: int = 0, allow_unsafe_rerun: bool = False, fork_id: str | None = None,
        frontier: Frontier | None = None,
    ) -> Any:
        """Continue ``record`` (made whole): the same execution under ``lease``, numbered from ``next_seq``
        (after the newest seq ever written), or a new execution forked from it (``fork_id``: its id).
        With ``frontier`` (``record`` is its record), the same execution continues from the frontier
        (``graph_frontier``): no replay, Spark's loop starts at the waiting node."""
        try:
            if frontier is not None:
                start = graph_frontier.restore(self.owner, frontier)
                journal = self._journal_at(frontier, start)
            else:
                if record.version < 5 and self.owner._event_edges and record.execution_history:
                    raise UnrecoverableExecutionError(
                        f"graph {self.graph_id!r} has event edges (on_event) and checkpoint {record.checkpoint_id} "
                        "was written by a version of spark-ckpt that did not journal published events, so "
                        "continuing could skip their subscribers. Nothing was run; start a new run"
                    )
                restore_into_graph(self.graph, self.nodes, record, pending=False)  # replay delivers them again
                journal = Journal.resuming(record, same_execution=same_execution)
            if same_execution:
                ex = self.new_execution(record.execution_id, record.run_input, next_seq=max(next_seq, record.seq + 1),
                                        lease=lease, journal=journal)
                ex.builder.extras_stored = dict(record.node_extras)
                # in-flight journals and failures stack on the resumed record
                ex.writer.resumed_on((await self.backend.aget(record.checkpoint_id)).blob, record.seq,
                                     record.checkpoint_id, writes=record.extras.get("writes"))
                ex.writer.attempt = next_attempt(record.extras, self.owner.worker_id, record.seq)
            else:
                ex = self.new_execution(fork_id or new_id("ex-"), record.run_input, journal=journal, fork_of=record)
            if frontier is not None:
                # the journal before this process's first visit is in the record ``frontier.linked``: whole
                # records link there (the next ones, to the whole records this process writes)
                ex.builder.whole_ends = [(record.history_start, frontier.linked)] if frontier.linked is not None else []
                ex.writer.attempt["frontier"] = frontier.waiting[0]
                ex.start_at, ex.superstep = start, record.superstep + 1
                ex.first_superstep = ex.superstep
            ex.allow_unsafe_rerun = allow_unsafe_rerun
            ex.skip = skips
            ex.report = RecoveryReport(execution_id=ex.execution_id, from_checkpoint=record.checkpoint_id,
                                       fell_back=fell_back, from_frontier=frontier.waiting[0] if frontier is not None else None)
            self.owner.last_recovery = ex.report
            return await self.execute(ex, load_run_input(record.run_input), resumed=same_execution)
        except BaseException:
            if self.active is None:
                await release_quietly(self.backend, lease)
            raise

    def _journal_at(self, frontier: Frontier, start: Any) -> Journal:
        """The journal continuing from ``frontier``, with where each restored input of ``start`` (the
        waiting node) came from, for a node with several parents (``deliveries``)."""
        record = frontier.record
        journal = Journal.at_frontier(record, frontier.counts)
        (key,) = frontier.waiting
        origins = record.node_states[key].pending_from
        if key in self.owner._fan_in and origins:
            for message, origin in zip(start._state["pending_inputs"], origins):
                if origin is not None:
                    journal.deliveries.delivered(key, message, origin)
        return journal
