"""``CheckpointedGraph``: checkpoints and crash recovery around an unmodified Spark graph.

How it hooks in (no Spark code is changed):

* every node *instance* gets its ``do`` replaced by a wrapper (what Spark's own retry/timeout
  policies do). The wrapper journals each visit (node key, per-node visit index, output), fires
  the node hooks, and on recovery returns journaled outputs instead of calling ``process()``
  (``graph_visits``);
* a lifecycle hook (``AFTER_ITERATION``) marks superstep boundaries, where the policy decides to
  checkpoint. A checkpoint = graph state + node states + the journal; with durability "sync" it is
  committed before the next superstep starts (``graph_run``).

Recovery re-enters Spark's own loop from the start node with the original input: journaled visits
are replayed (so conditional edges and loops route exactly as before) and the first visit past the
journal runs live, on the graph and node state restored from the checkpoint. This is the step
memoization DBOS and Temporal use; it keeps Spark's scheduler in charge. The unit of durability is
the superstep: visits of a superstep that did not complete (crash or failure) run again, because
sibling nodes share graph state and Spark gives no per-visit isolation. A long journal is not
replayed when the record's frontier is one waiting node: Spark's loop starts there instead, on the
restored state, so recovery costs the same at any length (``graph_frontier``).

This class is the facade: what knows Spark is in ``graph_visits`` (the node wrappers),
``graph_run`` (the run and continuing it) and ``graph_state`` (Spark graph and node state); what does
not is in ``spark_ckpt.engine`` (journal, record builder, chain reader, store path, recovery planner).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

import attrs

from ..backends.leases import release_quietly, worker_identity
from ..codec import Codec
from ..config import CheckpointConfig, with_backend
from ..engine import records
from ..engine.damage import damaged
from ..engine.frontier import Frontier
from ..engine.record_builder import FULL_HISTORY_EVERY, appended_json as _appended_json  # noqa: F401
from ..engine.recovery import RecoveryPlanner, RecoveryReport  # noqa: F401  (RecoveryReport: re-exported)
from ..codec.values import identical
from ..errors import (
    CodecError, ConfigError, DuplicateCheckpointError, ExecutionExistsError, LeaseError, NothingToRecoverError,
    RestoreConflictError, SparkCkptError, UnrecoverableExecutionError,
)
from ..executions import check_execution_id, refuse_existing
from ..model import COMPLETED, BlobParts, CheckpointHeader, GraphCheckpoint, Lease, new_id
from ..plugins import Hooks
from . import graph_frontier
from .graph_checkpoints import CheckpointAccess
from .graph_gates import store_resolutions_made_in_spark
from .graph_history import StateHistoryAccess
from .graph_run import GraphRunner
from .graph_state import (
    check_replayable, dump_run_input, install_context_create_checkpoint, load_message, restore_into_graph, task_type,
)
from .graph_state import load_run_input as _load_run_input  # noqa: F401  (re-exported)
from .graph_unsafe_nodes import marked_keys, refuse_unsafe_fork, refuse_unsafe_rerun
from .runtime import VisitContext, current_visit, node_state_adapter_for
from .structure import node_keys, ordered_nodes, structure_digest

log = logging.getLogger("spark_ckpt.graph")


class CheckpointedGraph(CheckpointAccess, StateHistoryAccess):
    """A Spark graph wrapped for checkpointing and recovery. See the module docstring.

    ``graph_id`` names the workflow across processes (default: the graph's user-set id, else its
    class name); ``graph_version`` is a label stored with every checkpoint (default: the structure
    digest). ``node_ids`` optionally maps node instances to stable keys.
    """

    def __init__(
        self,
        graph: Any,
        config: CheckpointConfig | None = None,
        *,
        graph_id: str | None = None,
        graph_version: str | None = None,
        node_ids: dict[Any, str] | None = None,
        worker_id: str | None = None,
        backend: Any = None,
    ) -> None:
        self.graph = graph
        self.config = with_backend(config, backend)  # (``backend``: an object, name or URL replacing config's)
        self._keys = node_keys(graph, node_ids)
        self._nodes_by_key = {self._keys[id(n)]: n for n in ordered_nodes(graph)}
        self._node_order = {key: position for position, key in enumerate(self._nodes_by_key)}
        self._read_edges()
        self.structure = structure_digest(graph, self._keys)
        self.graph_id = graph_id or self._default_graph_id(graph)
        self.graph_version = graph_version or self.structure
        self._unsafe_keys = marked_keys(self)  # nodes not safe to re-run (ConfigError before anything opens)
        self.worker_id = worker_id or worker_identity()
        self.backend = self.config.open_backend()
        self.codec: Codec = self.config.make_codec()
        self.backend.bind_codec(self.codec)  # (its get_checkpoint() decodes as this graph does)
        self.policy = self.config.make_policy()
        self.retention_rules = self.config.make_retention_rules()
        self.hooks = Hooks()
        self._adapter_keys: set[str] = set()  # nodes whose state an adapter (agent) snapshots
        self._restored: GraphCheckpoint | None = None
        self._pending_skips: dict[str, Any] = {}
        #: the restore point the next runs start after (``create_checkpoint`` / restoring one)
        self._restore_point: str | None = None
        self.last_recovery: RecoveryReport | None = None
        #: the batch id of the last ``run_tasks`` / ``recover_tasks``
        self.last_batch: str | None = None
        self._planner = RecoveryPlanner(
            self.backend, self.codec, graph_id=self.graph_id, structure=self.structure,
            allow_graph_change=self.config.allow_graph_change, owner=self.worker_id,
            ttl_s=self.config.lease_ttl_s, wanted_extras=self._adapter_keys, check_whole=check_replayable,
        )
        self._runner = GraphRunner(self)
        self._wrap_nodes()
        install_context_create_checkpoint(request_checkpoint)
        from spark.graphs.hooks import GraphLifecycleEvent

        self.graph.register_hook(GraphLifecycleEvent.AFTER_ITERATION, self._runner.after_superstep)
        _register_as_spark_graph()
        # a deep copy of the wrapped Spark graph (a SubgraphNode template) must not copy this wrapper
        graph.__deepcopy__ = functools.partial(subgraphs.deepcopy_spark_graph, self)

    # ------------------------------------------------------------------------------------------
    # setup
    @staticmethod
    def _default_graph_id(graph: Any) -> str:
        gid = getattr(graph, "id", None)
        if isinstance(gid, str) and gid and not (len(gid) == 32 and all(c in "0123456789abcdef" for c in gid)):
            return gid
        return type(graph).__name__ if type(graph).__name__ != "Graph" else f"graph-{structure_digest(graph, node_keys(graph))}"

    def _read_edges(self) -> None:
        edges = [edge for node in self._nodes_by_key.values() for edge in getattr(node, "edges", ())]
        #: event edges: a visit's published events are not journaled yet, so a replay past one is refused
        self._event_edges = any(getattr(edge, "is_event_driven", False) for edge in edges)
        #: timer edges fire by wall-clock time: their visits replay in other supersteps than they ran in,
        #: so replay is checked by visit, not by superstep
        self._timed_edges = any((getattr(edge, "delay_seconds", None) or 0) > 0 for edge in edges)
        # Only a node with two parents or more can hold inputs whose order differs between processes;
        # one parent delivers in its own visit order, so its inputs replay by visit number alone.
        parents: dict[str, set[str]] = {}
        for key, node in self._nodes_by_key.items():
            for edge in getattr(node, "edges", ()):
                target = self._keys.get(id(edge.to_node))
                if target is not None:
                    parents.setdefault(target, set()).add(key)
        #: per node, the nodes with an edge to it
        self._parents = parents
        self._fan_in = {key for key, sources in parents.items() if len(sources) > 1}

    def _wrap_nodes(self) -> None:
        for key, node in self._nodes_by_key.items():
            if getattr(node, "_spark_ckpt_wrapped", None) is self:
                continue
            adapter = node_state_adapter_for(node) or self._agent_adapter_for(node)
            if adapter is not None:
                adapter.prepare(node, self)
                self._adapter_keys.add(key)
            self._runner.visits.wrap(node, key, fan_in=key in self._fan_in)
            subgraphs.attach(self, node, key)  # a SubgraphNode's inner visits: journaled in its visit
            node._spark_ckpt_wrapped = self

    @staticmethod
    def _agent_adapter_for(node: Any) -> Any:
        """Agents are handled by the agent adapter, imported only when a graph holds an agent."""
        if not type(node).__module__.startswith("spark.agents") and "Agent" not in [c.__name__ for c in type(node).__mro__]:
            return None
        try:
            from . import agent  # noqa: F401  (registers its NodeStateAdapter on import)
        except ImportError:  # pragma: no cover
            return None
        return node_state_adapter_for(node)

    def node_key(self, node: Any) -> str:
        if isinstance(node, str):
            if node not in self._nodes_by_key:
                raise ConfigError(f"unknown node {node!r}; nodes: {', '.join(self._nodes_by_key)}")
            return node
        try:
            return self._keys[id(node)]
        except KeyError:
            raise ConfigError(f"{node!r} is not a node of this graph") from None

    @property
    def node_keys(self) -> list[str]:
        return list(self._nodes_by_key)

    # ------------------------------------------------------------------------------------------
    # running
    async def run(self, inputs: Any = None, *, execution_id: str | None = None, resume: bool = False) -> Any:
        """Run the graph (same result, state and node order as the unwrapped graph), checkpointing it.

        ``inputs`` is what Spark's ``Graph.run`` takes: a value, a dict, a ``NodeMessage`` or a Spark
        ``Task`` (its budget, campaign, metadata and ids behave as in bare Spark; the Task is stored
        with the execution, so a recovery re-enters with the same Task).

        ``execution_id`` names the execution (e.g. ``"order-42"``; default: a generated ``ex-...`` id):
        letters, digits and ``-_.:@+=``, at most 100 bytes (``ConfigError`` otherwise). A name is used
        once per store, across graph ids: a run named as a stored execution raises
        ``ExecutionExistsError`` before anything runs, unless ``resume=True`` and it is an execution of
        this graph run with identical inputs: then an unfinished one is continued (as
        ``recover_and_continue(execution_id=...)``) and a completed one returns its stored result, run
        nothing again (``last_recovery.already_completed``). Of two workers starting the same name at
        once, one runs it and the other gets ``ExecutionExistsError``. Ignored when checkpointing is
        disabled.
        """
        if not self.config.enabled:
            return await self.graph.run(inputs)
        if execution_id is not None:
            check_execution_id(execution_id, self.backend, self.graph_id)
        elif resume:
            raise ConfigError(
                "run(resume=True) needs the execution_id of the run to continue; without a name, "
                "`recover_and_continue()` continues the newest unfinished execution"
            )
        if self._restored is not None:  # after restore_from_checkpoint: continue, or refuse; never twice
            continued = await self._run_after_restore(inputs, execution_id)
            if continued is not None:
                return continued.result
        if execution_id is not None:
            existing = await self._planner.head(execution_id)
            if existing is not None:
                return await self._run_existing(existing, inputs, resume=resume)
        runner = self._runner
        runner.last_started = None
        if task_type(inputs) in LONG_LIVED_TASK_TYPES:
            started = self._long_running().run(inputs, execution_id)
        else:
            execution = runner.new_execution(execution_id or new_id("ex-"), dump_run_input(inputs))
            execution.restore_point = self._restore_point
            execution.named = execution_id is not None
            started = runner.execute(execution, inputs, resumed=False)
        try:
            return await started
        except (LeaseError, DuplicateCheckpointError) as exc:
            if execution_id is None or not _lost_the_start(runner, execution_id):
                raise
            raise ExecutionExistsError(
                f"execution {execution_id!r} was started by another worker at the same time ({exc}); it runs "
                f"there and nothing ran here. `await graph.recover_and_continue(execution_id={execution_id!r}, "
                "wait=True)` waits for it and returns its result"
            ) from None

    async def _run_existing(self, head: CheckpointHeader, inputs: Any, *, resume: bool) -> Any:
        """``run(inputs, execution_id=...)`` of a stored execution: refused, or (``resume``) continued."""
        execution_id = head.execution_id
        refuse_existing(head, self.graph_id, resume=resume)
        stored = self._run_input_of(execution_id)
        if stored is _UNKNOWN_INPUT:
            raise ExecutionExistsError(
                f"execution {execution_id!r} exists, and its start record cannot be read to compare its inputs "
                f"with these; nothing ran. `await graph.recover_and_continue(execution_id={execution_id!r})` "
                "continues it (or returns its result) whatever its inputs were"
            )
        if not identical(stored, dump_run_input(inputs)):
            raise ExecutionExistsError(
                f"execution {execution_id!r} of graph {self.graph_id!r} was started with other inputs than these; "
                "resume=True only continues a run given the inputs it started with. Nothing ran. Choose another "
                f"id for a new run, or `await graph.recover_and_continue(execution_id={execution_id!r})`"
            )
        log.info("run(execution_id=%r, resume=True): the execution exists (%s); %s", execution_id, head.status,
                 "returning its stored result" if head.status == COMPLETED else "continuing it")
        return await self.recover_and_continue(execution_id=execution_id)

    async def list_executions(self, *, status: str | None = None, limit: int | None = None) -> list[Any]:
        """This graph's executions, newest first, at most ``limit``: ``ExecutionSummary`` records
        (``execution_id``, ``graph_id``, ``status``, ``started_at``, ``updated_at``, ``checkpoints``,
        ``last_seq``, ``last_checkpoint``). ``status``: "running", "failed", "waiting", "completed" or
        "unfinished" (the first three). ``spark_ckpt.executions.list_executions`` lists a whole store."""
        from ..backends.base import LocalBackend
        from ..executions import list_executions

        listing = functools.partial(list_executions, self.backend, graph_id=self.graph_id, status=status,
                                    limit=limit, kind="graph")
        return listing() if isinstance(self.backend, LocalBackend) else await asyncio.to_thread(listing)

    async def run_with_recovery(
        self, inputs: Any = None, *, max_retries: int = 3, strategy: str = "last",
        backoff: float | Callable[[int], float] = 0.0, retry_on: type | tuple[type, ...] = (Exception,),
        offset: int = 1, resume: bool = True, allow_unsafe_rerun: bool = False, execution_id: str | None = None,
    ) -> Any:
        """``run(inputs)``, and on a failure up to ``max_retries`` recoveries (the guide's "Automatic" and
        "Progressive" recovery; ``graph_recovery_strategies`` has the rules).

        ``strategy``: "last" recovers the failed execution from its newest checkpoint each time (completed
        visits are replayed, never run again); "progressive" tries the newest checkpoint, then the one
        ``offset`` boundaries earlier, then a fresh run from the state the run started with. ``backoff``:
        seconds before the first retry, doubled for each next one (or a function of the attempt number).
        ``retry_on``: the exceptions that are retried (others are raised at once). ``resume``: first
        continue an unfinished execution of this graph run with identical inputs (after a crash).
        Every step is logged and listed in ``last_recovery.steps``; the last error is raised when the
        retries are used up. A node not safe to re-run is never run again (``UnsafeToRetryError``)
        unless ``allow_unsafe_rerun``; another worker's execution is never run beside it (``LeaseError``).
        ``execution_id``: the first run's name (``run(inputs, execution_id=..., resume=resume)``: with
        ``resume`` a stored execution of that name run with these inputs is continued, or its result
        returned); retries of strategy "last" continue it, a fork replacing it gets a generated id and
        recovering the name follows it there."""
        from .graph_recovery_strategies import run_with_recovery

        return await run_with_recovery(self, inputs, max_retries=max_retries, strategy=strategy, backoff=backoff,
                                       retry_on=retry_on, offset=offset, resume=resume,
                                       allow_unsafe_rerun=allow_unsafe_rerun, execution_id=execution_id)

    async def run_tasks(
        self, scheduler: Any, *, continue_on_error: bool = False, on_task_completed: Any = None,
        on_task_failed: Any = None, usage_provider: Any = None, batch_id: str | None = None,
    ) -> Any:
        """Spark's ``Graph.run_tasks`` (same arguments, callbacks and ``TaskBatchResult``), each task its
        own checkpointed execution. After a crash, ``recover_and_continue()`` (or ``recover_tasks``)
        finishes the batch: completed tasks are not run again, the one in flight continues from its last
        checkpoint, dependencies and campaign budgets still hold. ``batch_id`` names the batch
        (default: a new id, in ``last_batch``)."""
        from .graph_tasks import run_tasks

        if not self.config.enabled:
            return await self.graph.run_tasks(scheduler, continue_on_error=continue_on_error,
                                              on_task_completed=on_task_completed, on_task_failed=on_task_failed,
                                              usage_provider=usage_provider)
        return await run_tasks(self, scheduler, continue_on_error=continue_on_error,
                               on_task_completed=on_task_completed, on_task_failed=on_task_failed,
                               usage_provider=usage_provider, batch_id=batch_id)

    async def recover_tasks(self, *, batch_id: str | None = None, scheduler: Any = None,
                            allow_unsafe_rerun: bool = False, **callbacks: Any) -> Any:
        """Finish the newest unfinished task batch (or ``batch_id``) after a crash or a failure; returns
        Spark's ``TaskBatchResult`` with every task of the batch. ``scheduler``: the batch's tasks built
        again (default: rebuilt from the stored tasks); ``callbacks``: ``run_tasks``'s ``on_task_completed``,
        ``on_task_failed``, ``usage_provider``, ``continue_on_error`` (default: as the batch was run).
        ``allow_unsafe_rerun``: as for ``recover_and_continue``."""
        from .graph_tasks import recover_tasks

        return await recover_tasks(self, batch_id=batch_id, scheduler=scheduler,
                                   allow_unsafe_rerun=allow_unsafe_rerun, **callbacks)

    async def _run_task(self, execution_id: str, task: Any, allow_unsafe_rerun: bool = False
                        ) -> tuple[Any, float | None]:
        """One task of a batch: its execution run, continued, or (completed before) its stored result;
        with the run time its records show when it had completed before (else None: measure it)."""
        head = await self._planner.head(execution_id)
        if head is None:
            runner = self._runner
            return await runner.execute(runner.new_execution(execution_id, dump_run_input(task)), task,
                                        resumed=False), None
        if head.status == COMPLETED:
            first = min((h.created_at for h in await self.backend.alist(execution_id=execution_id)),
                        default=head.created_at)
            return self._completed_result(head), max(0.0, head.created_at - first)
        return await self.recover_and_continue(execution_id=execution_id, allow_unsafe_rerun=allow_unsafe_rerun), None

    async def _restore_task_end(self, execution_id: str) -> None:
        """The graph and node state a completed task of a batch ended with (the next task starts there)."""
        head = await self._planner.head(execution_id)
        if head is None or head.status != COMPLETED:
            raise UnrecoverableExecutionError(
                f"the completed task execution {execution_id!r} is no longer in {self.backend.describe()} "
                "(deleted, or pruned by retention), so the batch's next task cannot start from the state it "
                "ended with; nothing was run. Keep more executions (retention_count) for long batches"
            )
        self._completed_result(head)

    async def _run_long_lived(self, task: Any) -> Any:
        return await self._long_running().run(task)

    def _long_running(self) -> Any:
        from .graph_long_running import LongRunningDriver  # every visit committed per mailbox message

        return LongRunningDriver(self)

    async def resume_from(self, checkpoint: Any, *, overrides: dict[str, Any] | None = None, task: Any = None) -> Any:
        """Spark's ``Graph.resume_from``, run through this wrapper: graph state from a Spark
        ``GraphCheckpoint`` (or its dict), ``overrides`` on top, its mailboxes, then ``run`` of a
        RESUMABLE copy of ``task`` (as Spark does). For spark-ckpt's own checkpoints use
        ``continue_from_checkpoint`` or ``recover_and_continue``."""
        from spark.graphs.checkpoint import GraphCheckpoint as SparkCheckpoint
        from spark.graphs.tasks import Task, TaskType

        checkpoint_obj = SparkCheckpoint.ensure(checkpoint)
        if self.config.enabled:
            self._long_running().check_supported()  # refused before the live graph's state is changed
        state = self.graph.state
        await state.reset(dict(checkpoint_obj.state))
        if overrides:
            await state.update(dict(overrides))
        mailboxes = checkpoint_obj.metadata.get("mailboxes")
        if mailboxes:
            await state.restore_mailboxes(mailboxes)
        resume_task = task.model_copy(deep=True) if task is not None else Task()
        resume_task.type = TaskType.RESUMABLE
        resume_task.metadata = dict(resume_task.metadata or {})
        resume_task.metadata.setdefault("checkpoint_id", checkpoint_obj.checkpoint_id)
        resume_task.resume_from = checkpoint_obj.checkpoint_id
        return await self.run(resume_task)

    def __getattr__(self, name: str) -> Any:
        # Everything of Spark's Graph that spark-ckpt does not own (checkpoint_state,
        # configure_checkpoints, get_checkpoint_history, state, event_bus, nodes, register_hook, ...)
        # is the wrapped graph's. Only called for names this class does not define.
        if name.startswith("__") or name == "graph":
            raise AttributeError(name)
        return getattr(self.graph, name)

    # Spark's SubgraphNode sets these on the graph it runs (``share_state``, ``share_event_bus``)
    @property
    def state(self) -> Any:
        return self.graph.state

    @state.setter
    def state(self, value: Any) -> None:
        self.graph.state = value

    @property
    def event_bus(self) -> Any:
        return self.graph.event_bus

    @event_bus.setter
    def event_bus(self, value: Any) -> None:
        self.graph.event_bus = value

    def copy(self) -> "CheckpointedGraph":
        """A fresh runnable clone, as Spark's ``SubgraphNode(graph=...)`` takes one per execution: the
        wrapped graph deep-copied without this wrapper's parts, wrapped again with the same config,
        graph id and node keys (each run of it is an execution of its own; inside a checkpointed outer
        graph the subgraph is journaled in the outer visit instead, see ``subgraphs``)."""
        clone, names = subgraphs.clone_spark_graph(self)
        return CheckpointedGraph(clone, self.config, graph_id=self.graph_id, graph_version=self.graph_version,
                                 node_ids=names, worker_id=self.worker_id)

    async def flush(self) -> None:
        """Wait until every checkpoint taken so far is stored (durability "async" or "exit").

        From inside a node it makes the checkpoints of the current run durable now; after a run it
        is a no-op (runs end flushed).
        """
        ex = self._runner.active
        if ex is not None:
            await ex.writer.flush()

    def _request_checkpoint(self) -> str:
        return self._runner.request_checkpoint()

    # ------------------------------------------------------------------------------------------
    # recovery
    async def recover_and_continue(
        self, *, execution_id: str | None = None, wait: bool | float = False, allow_unsafe_rerun: bool = False
    ) -> Any:
        """Continue the newest unfinished execution of this graph, or the one named ``execution_id``
        (after a failure or a crash; a name given to ``run(inputs, execution_id=...)`` or a generated id
        from ``list_executions()``, ``last_recovery`` or ``spark-ckpt list --executions``).

        Completed visits are replayed from the journal, not executed again. Raises
        ``NothingToRecoverError`` when there is no unfinished execution, or no execution of this graph
        named ``execution_id`` (it never starts afresh); its message names the unfinished executions the
        store does hold and ids close to the one asked for.
        If another live worker owns the execution, raises ``LeaseError`` (``wait=True`` or a number of
        seconds: wait for that worker to finish or for its lease to expire instead). An execution that
        has completed (another worker finished it, also while this one waited) is not run again: its
        stored result is returned and ``last_recovery.already_completed`` is True.

        Refuses, before anything runs: ``MissingCheckpointError`` when checkpoints the executions index
        says were written are gone, ``UnrecoverableExecutionError`` when none verifies,
        ``RecoveryDivergedError`` when replaying the journal does not reproduce the run. A visit of a
        node (or an agent tool) marked not safe to re-run that was in flight at the crash, or failed,
        raises ``UnsafeToRetryError``; ``allow_unsafe_rerun=True`` runs it again (after you checked its
        side effect).
        """
        planner = self._planner
        if execution_id is None:
            from .graph_tasks import newest_unfinished_work, recover_tasks

            batch_id, execution_id = await newest_unfinished_work(self)
            if batch_id is not None:
                return await recover_tasks(self, batch_id=batch_id, allow_unsafe_rerun=allow_unsafe_rerun)
        await store_resolutions_made_in_spark(self, execution_id)
        lease, head = await planner.claim(execution_id, wait)
        if lease is None:
            return self._completed_result(head)
        try:
            found = await self._frontier(execution_id, head)
            if found is not None:
                record, fell_back = found.record, []
            else:
                record, fell_back = await self._latest_verified(execution_id, head)
        except BaseException:
            await release_quietly(self.backend, lease)
            raise
        if isinstance(record.extras.get("superseded_by"), str):  # handed over to a fork: that is this run now
            from .graph_recovery_strategies import finish_replacement

            await release_quietly(self.backend, lease)
            return await finish_replacement(self, record, wait=wait, allow_unsafe_rerun=allow_unsafe_rerun)
        return await self._continue(record, same_execution=True, fell_back=fell_back, lease=lease,
                                    next_seq=head.seq + 1, allow_unsafe_rerun=allow_unsafe_rerun, frontier=found)

    async def _frontier(self, execution_id: str, head: CheckpointHeader) -> Frontier | None:
        """The frontier a long execution continues from, if this graph and its newest record allow it
        (``graph_frontier``); None: its journal is replayed."""
        if not graph_frontier.possible(self):
            return None
        return await self._planner.frontier(execution_id, head, functools.partial(graph_frontier.eligible, self))

    def _planner_head_now(self, execution_id: str) -> CheckpointHeader | None:
        head = self.backend.execution_head(execution_id)
        if head is not None:
            self.codec.index_tags.check(head)
        return head

    def _completed_result(self, head: CheckpointHeader, depth: int = 0) -> Any:
        """A completed execution's stored result (its graph state restored), run nothing again."""
        record = self._planner.completed(head)
        replaced_by = record.extras.get("superseded_by") if isinstance(record.extras, dict) else None
        if isinstance(replaced_by, str) and depth < 8:
            successor = self._planner_head_now(replaced_by)
            if successor is not None and successor.status == COMPLETED:
                result = self._completed_result(successor, depth + 1)
                self.last_recovery.superseded_by = replaced_by
                log.info("execution %s was replaced by execution %s; returning its result", head.execution_id,
                         replaced_by)
                return result
        with damaged(f"checkpoint {record.checkpoint_id}"):
            result = load_message(record.result) if record.result is not None else None
        restore_into_graph(self.graph, self._nodes_by_key, record)
        self.last_recovery = RecoveryReport(execution_id=head.execution_id, from_checkpoint=record.checkpoint_id,
                                            already_completed=True)
        log.info("execution %s had already completed; returning its stored result", head.execution_id)
        return result

    async def continue_from_checkpoint(self, checkpoint: GraphCheckpoint | str | None = None, *,
                                       allow_unsafe_rerun: bool = False) -> Any:
        """Continue from the restored checkpoint (``restore_from_checkpoint``) or the given one.

        Continuing the newest checkpoint of an unfinished execution continues that execution; any other
        checkpoint starts a new execution forked from it (its history is never overwritten). Pending
        ``skip_node`` requests apply to the continuation. A visit of a node not safe to re-run that the
        checkpoint shows started and not completed raises ``UnsafeToRetryError`` unless
        ``allow_unsafe_rerun=True``.
        """
        if checkpoint is not None:
            self.restore_from_checkpoint(checkpoint)
        record = self._restored or self.get_last_checkpoint()
        if record is None:
            raise NothingToRecoverError(f"graph {self.graph_id!r} has no checkpoint to continue from")
        if is_restore_point(record):
            # a restore point holds no run: the run that failed after it is the one to continue
            later = self._unfinished_after(record)
            if later is None:
                raise NothingToRecoverError(
                    f"checkpoint {record.checkpoint_id} is a restore point taken outside a run, and no run of graph "
                    f"{self.graph_id!r} started after it is unfinished: there is nothing to continue. Its state is "
                    "restored; start a run from it with `await graph.run(inputs)`"
                )
            log.info("continuing execution %s, the unfinished run that started after restore point %s",
                     later.execution_id, record.checkpoint_id)
            self._restored = None
            return await self.recover_and_continue(execution_id=later.execution_id)
        try:
            head = await self._planner.head(record.execution_id)
        except CodecError:  # an index entry that does not authenticate: never continue in place
            head = None
        if head is not None and head.checkpoint_id == record.checkpoint_id and head.status != COMPLETED:
            lease, head = await self._planner.claim(record.execution_id, wait=False)
            if lease is not None and head.checkpoint_id == record.checkpoint_id:
                return await self._continue(record, same_execution=True, fell_back=[], lease=lease,
                                            next_seq=head.seq + 1, allow_unsafe_rerun=allow_unsafe_rerun)
            if lease is not None:  # another worker moved the execution on meanwhile: this record is older now
                await release_quietly(self.backend, lease)
        return await self._continue(record, same_execution=False, fell_back=[], allow_unsafe_rerun=allow_unsafe_rerun)

    async def _continue(self, record: GraphCheckpoint, *, same_execution: bool, fell_back: list[str],
                        lease: Lease | None = None, next_seq: int = 0, allow_unsafe_rerun: bool = False,
                        fork_id: str | None = None, frontier: Frontier | None = None) -> Any:
        skips = {**{k: None for k in record.skip_nodes}, **record.skip_outputs, **self._pending_skips}
        try:
            self._check_continuable(record, fork=not same_execution, allow_unsafe_rerun=allow_unsafe_rerun,
                                    skips=skips)
        except BaseException:
            await release_quietly(self.backend, lease)
            raise
        self._pending_skips = {}
        self._restored = None
        if task_type(_load_run_input(record.run_input)) in LONG_LIVED_TASK_TYPES:
            if fork_id is not None:
                raise ConfigError("a long-running graph's execution is continued in place, never forked by "
                                  "run_with_recovery; use strategy='last'")
            return await self._long_running().resume(record, same_execution=same_execution, fell_back=fell_back,
                                                     skips=skips, lease=lease, next_seq=next_seq)
        return await self._runner.resume(record, same_execution=same_execution, fell_back=fell_back, skips=skips,
                                         lease=lease, next_seq=next_seq, allow_unsafe_rerun=allow_unsafe_rerun,
                                         fork_id=fork_id, frontier=frontier)

    def _check_continuable(self, record: GraphCheckpoint, *, fork: bool, allow_unsafe_rerun: bool,
                           skips: dict[str, Any]) -> None:
        """What is refused before anything runs: a damaged journal, a visit not safe to re-run that
        started and did not complete, and (a fork) one its execution completed after ``record``."""
        check_replayable(record)
        refuse_unsafe_rerun(self, record, allowed=allow_unsafe_rerun, skips=skips)
        if fork:
            refuse_unsafe_fork(self, record, allowed=allow_unsafe_rerun, skips=skips)

    async def _run_after_restore(self, inputs: Any, execution_id: str | None = None) -> "Continued | None":
        """``run(inputs)`` right after ``restore_from_checkpoint``: the restored record's unfinished run
        with identical inputs is continued (``Continued``), as is the unfinished run with identical
        inputs that started after a restored restore point; a restored unfinished run given other
        inputs is refused; otherwise (a completed run's record, a restore point) None: a new run starts
        on the restored state. A run named ``execution_id`` continues only that execution."""
        record = self._restored
        wanted = dump_run_input(inputs)
        if is_restore_point(record):
            later = self._unfinished_after(record)
            if later is not None and identical(self._run_input_of(later.execution_id), wanted):
                _refuse_other_name(execution_id, later.execution_id, record.checkpoint_id)
                log.info("run() after restoring %s continues execution %s (same inputs; it had not finished)",
                         record.checkpoint_id, later.execution_id)
                self._restored = None
                return Continued(await self.recover_and_continue(execution_id=later.execution_id))
            self._restored = None
            return None
        head = await self._planner.head(record.execution_id)
        if head is None or head.status == COMPLETED:
            self._restored = None
            return None
        if identical(record.run_input, wanted):
            _refuse_other_name(execution_id, record.execution_id, record.checkpoint_id)
            log.info("run() after restoring %s continues its execution %s (same inputs; it had not finished)",
                     record.checkpoint_id, record.execution_id)
            if head.checkpoint_id == record.checkpoint_id:
                return Continued(await self.continue_from_checkpoint())
            from .graph_recovery_strategies import fork_replacing  # an earlier checkpoint: a fork replaces that run

            self._restored = None
            return Continued(await fork_replacing(self, record, [record.execution_id]))
        raise RestoreConflictError(
            f"checkpoint {record.checkpoint_id} was restored: it belongs to execution {record.execution_id}, which "
            "has not finished, and run() was given other inputs than that run. Running them on its state could "
            "apply work twice. To finish that run: `await graph.continue_from_checkpoint()` (or "
            "`recover_and_continue()`); to start a different run, call run() without restoring first"
        )

    def _run_input_of(self, execution_id: str) -> Any:
        start = self._start_record(execution_id)
        return _UNKNOWN_INPUT if start is None else start.run_input

    async def _latest_verified(self, execution_id: str, head: CheckpointHeader) -> tuple[GraphCheckpoint, list[str]]:
        return await self._planner.latest_verified(execution_id, head)

    # ------------------------------------------------------------------------------------------
    # approvals (``spark_ckpt.approvals``: also the CLI's ``spark-ckpt approvals``)
    async def list_approvals(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """The approval requests of this graph's waiting executions (``status``: only pending, approved
        or rejected ones)."""
        from .. import approvals

        return approvals.list_approvals(self.backend, self.codec, graph_id=self.graph_id,
                                        statuses=None if status is None else [status])

    async def resolve_approval(self, approval_id: str, *, approved: bool, reviewer: str | None = None,
                               notes: str | None = None) -> dict[str, Any]:
        """Approve or reject a request of a waiting execution, in the store (``LeaseError`` if a live worker
        owns the execution, ``ApprovalError`` for an unknown, resolved or not-waiting one); then
        ``recover_and_continue()`` passes (or fails at) the gate."""
        from .. import approvals

        return approvals.resolve_approval(self.backend, self.codec, approval_id, approved=approved, reviewer=reviewer,
                                          notes=notes, graph_id=self.graph_id, owner=self.worker_id,
                                          ttl_s=self.config.lease_ttl_s)

    # ------------------------------------------------------------------------------------------
    # reading records (the recovery planner's)
    def _decode(self, blob: bytes | BlobParts, header: CheckpointHeader | None = None) -> GraphCheckpoint:
        return self._planner.decode(blob.join() if type(blob) is BlobParts else blob, header)

    def _check_graph(self, record: GraphCheckpoint) -> None:
        self._planner.check(record)

    def _with_full_history(self, record: GraphCheckpoint, decoded: dict[int, GraphCheckpoint] | None = None
                           ) -> GraphCheckpoint:
        return self._planner.make_whole(record, decoded)

    def _load(self, checkpoint_id: str) -> GraphCheckpoint:
        return self._planner.load(checkpoint_id)

    def _rebase(self, header: CheckpointHeader) -> int | None:
        """Make a record stand alone in place, so retention can delete the ones before it."""
        return records.rebase(self.backend, self.codec, header, self._adapter_keys)

    def close(self) -> None:
        """Close the backend opened from the config's name or URL; a backend object given to the config
        stays open (its creator closes it)."""
        if self.config.owns_backend:
            self.backend.close()

    def __repr__(self) -> str:
        return f"CheckpointedGraph(graph_id={self.graph_id!r}, backend={self.backend.describe()!r})"


@attrs.frozen
class Continued:
    """The result of a run that continued an unfinished execution (it may be None)."""

    result: Any


_UNKNOWN_INPUT = object()  # never identical to a run input


def _lost_the_start(runner: GraphRunner, execution_id: str) -> bool:
    """The named run that just ended stored no record: another worker started that execution first."""
    started = runner.last_started
    return started is not None and started.execution_id == execution_id and started.writer.last_blob is None


def _refuse_other_name(execution_id: str | None, continued: str, checkpoint_id: str) -> None:
    if execution_id is not None and execution_id != continued:
        raise RestoreConflictError(
            f"checkpoint {checkpoint_id} was restored and run() was given the inputs of its unfinished execution "
            f"{continued!r}, which it would continue, but named the run {execution_id!r}. Nothing ran. Call "
            f"run(inputs, execution_id={continued!r}) (or without execution_id) to finish that run, or do not "
            "restore first to start a new one"
        )


def is_restore_point(record: GraphCheckpoint) -> bool:
    """A record ``create_checkpoint()`` took outside a run (a standalone, completed restore point)."""
    return bool(record.extras.get("manual")) and record.run_input is None and record.status == COMPLETED


#: Spark task types whose nodes run as continuous workers (no supersteps)
LONG_LIVED_TASK_TYPES = frozenset({"longrunning", "resumable"})


def _register_as_spark_graph() -> None:
    """A wrapped graph is a Spark graph to Spark's own checks (``SubgraphNode(graph=...)`` type-checks
    against ``BaseGraph``, an ABC): registered as a virtual subclass, nothing of Spark's changes."""
    from spark.graphs.base import BaseGraph

    if not issubclass(CheckpointedGraph, BaseGraph):
        BaseGraph.register(CheckpointedGraph)


async def request_checkpoint(reason: str = "explicit") -> str:
    """Ask for a checkpoint at the end of the current superstep; returns its future id."""
    visit = current_visit()
    if visit is None:
        raise SparkCkptError(
            "checkpoint_now() must be awaited inside a node of a graph wrapped with spark_ckpt.checkpointed()"
        )
    return _owner_of(visit)._request_checkpoint()


def _owner_of(visit: VisitContext) -> CheckpointedGraph:
    owner = visit.extras.get("graph")
    if owner is None:
        raise SparkCkptError("this visit does not belong to a CheckpointedGraph")
    return owner


# SubgraphNodes (imported last: that module subclasses CheckpointedGraph)
from . import subgraphs  # noqa: E402
