"""``CheckpointedGraph``: checkpoints and crash recovery around an unmodified Spark graph.

How it hooks in (no Spark code is changed):

* every node *instance* gets its ``do`` replaced by a wrapper (what Spark's own retry/timeout
  policies do). The wrapper journals each visit (node key, per-node visit index, output), fires
  the node hooks, and on recovery returns journaled outputs instead of calling ``process()``;
* lifecycle hooks (``AFTER_ITERATION``) mark superstep boundaries, where the policy decides to
  checkpoint. A checkpoint = graph state + node states + the journal; with durability "sync" it is
  committed before the next superstep starts.

Recovery re-enters Spark's own loop from the start node with the original input: journaled visits
are replayed (so conditional edges and loops route exactly as before) and the first visit past the
journal runs live, on the graph and node state restored from the checkpoint. This is the step
memoization DBOS and Temporal use; it keeps Spark's scheduler in charge.

The unit of durability is the superstep: visits of a superstep that did not complete (crash or
failure) run again, because sibling nodes share graph state and Spark gives no per-visit isolation.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import orjson

from ..codec import Codec, Identity, to_data
from ..codec.convert import dumps_data, find_unencodable
from ..config import CheckpointConfig
from ..engine import chain, records
from ..engine.chain import DELTA as _DELTA
from ..errors import (
    CheckpointNotFoundError, CodecError, ConfigError, CorruptCheckpointError, EncodeError, GraphMismatchError,
    LeaseError, MissingCheckpointError, NothingToRecoverError, RecoveryDivergedError, SparkCkptError,
    UnrecoverableExecutionError,
)
from ..events import CheckpointDecision, CheckpointSaved, FailureEvent, NodeEvent
from ..model import (
    COMPLETED, CONTENT_VERSION, FAILED, GRAPH, RUNNING, CheckpointHeader, FailureInfo, GraphCheckpoint, Lease, Visit,
    canonical_checkpoint_id, new_id,
)
from ..backends.base import LocalBackend
from ..backends.leases import claim, worker_identity
from ..plugins import Hooks
from ..retention import prune
from . import agent_delta
from .deliveries import Deliveries, diverged
from .durability import DurableWriter
from .runtime import LazyVisit, VisitContext, _current_visit, current_visit, node_state_adapter_for
from .structure import node_keys, ordered_nodes, structure_digest

log = logging.getLogger("spark_ckpt.graph")

#: a checkpoint with the whole journal and state at least this often (the others hold only changes)
FULL_HISTORY_EVERY = 64

def _appended_json(old: Any, new: Any) -> bytes | None:
    """If JSON ``new`` is the list JSON ``old`` was with items added at its end, the JSON array of
    those items; else None. Compares bytes only: orjson writes a value the same way every time, so
    ``[a,b]`` -> ``[a,b,c]`` is the old text without its ``]``, a comma, then the new items."""
    if type(old) is not bytes or type(new) is not bytes or old[:1] != b"[" or len(new) <= len(old):
        return None
    if old == b"[]":
        return new
    if new[len(old) - 1] != 0x2C or not new.startswith(old[:-1]):  # 0x2C: ","
        return None
    return b"[" + new[len(old):]


def _is_bookkeeping(state: Any, key: str) -> bool:
    """Spark's own keys in graph state (schema version, mailboxes), which ``get_snapshot`` leaves out."""
    return key == getattr(state, "_SCHEMA_VERSION_KEY", "__schema_version__") or key.startswith(
        f"{getattr(state, '_MAILBOX_PREFIX', '__mailbox__')}:")


#: keys Spark keeps in a node's _state that are runtime plumbing, not user state
_NODE_RUNTIME_KEYS = frozenset({"context_snapshot", "processing", "pending_inputs", "process_count"})
#: graph state values that cannot change in place (exact types: a subclass could)
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_ABSENT = object()


def _dump_message(message: Any) -> Any:
    """A NodeMessage as plain data (``raw`` is the model's unparsed output: kept only if plain data)."""
    if message is None:
        return None
    dump = getattr(message, "model_dump", None)
    if dump is None:
        return {"content": message}
    data = dump(mode="python", exclude_defaults=True)
    if "raw" in data and find_unencodable(data["raw"]) is not None:
        # ``raw`` holds a model's unparsed response object: routing never reads it, and it is
        # usually not plain data. Keep its repr rather than failing the checkpoint.
        data["raw"] = {"__repr__": repr(data["raw"])[:2000]}
    return data


def _visit_data(visit: Visit) -> dict[str, Any]:
    return to_data(visit)


def _load_message(data: Any) -> Any:
    from spark.nodes.types import NodeMessage

    if data is None:
        return NodeMessage(content=None)
    return NodeMessage(**data)


@attrs.define
class RecoveryReport:
    """What a recovery did: which visits came from the journal and which ran live."""

    execution_id: str
    from_checkpoint: str | None
    replayed: list[tuple[str, int]] = attrs.field(factory=list)
    live: list[tuple[str, int]] = attrs.field(factory=list)
    skipped: list[tuple[str, int]] = attrs.field(factory=list)
    fell_back: list[str] = attrs.field(factory=list)  # checkpoints that failed to verify and were passed over
    #: the execution had completed (another worker finished it): its stored result was returned, nothing ran
    already_completed: bool = False
    #: ``skip_node`` requests the continuation never reached (their node had no further visit)
    unused_skips: list[str] = attrs.field(factory=list)


@attrs.define
class _Execution:
    """Mutable bookkeeping of the execution currently running."""

    execution_id: str
    run_input: Any
    #: seq of the next record built (records of one execution are numbered in the order they are built)
    next_seq: int = 0
    superstep: int = 0
    visit_counts: dict[str, int] = attrs.field(factory=dict)
    journal: list[dict[str, Any]] = attrs.field(factory=list)  # Visit records as data
    replay: dict[tuple[str, int], Visit] = attrs.field(factory=dict)
    inflight_recovered: dict[str, Any] = attrs.field(factory=dict)
    inflight: dict[str, Any] = attrs.field(factory=dict)
    skip: dict[str, Any] = attrs.field(factory=dict)  # node key -> dumped output to use (None: pass input through)
    lease: Lease | None = None
    #: monotonic time by which the lease must have been renewed before a live visit may start
    lease_deadline: float = float("inf")
    #: set when the lease was lost: no live visit starts any more (a stalled worker stops)
    fenced: LeaseError | None = None
    last_checkpoint_at: float = 0.0
    supersteps_since: int = 0
    checkpoint_requested: str | None = None
    #: encoded bytes and seq of the last boundary checkpoint *stored* (failure and in-flight records are
    #: built on it; set only once its put succeeded, so they never stack on a record that is not there)
    last_blob: bytes | None = None
    last_status: str | None = None
    last_seq: int | None = None
    #: the final (completed) record was built (it may still be on its way to the store)
    completed: bool = False
    #: boundary records still to be written whole: the start record and the one after it
    whole_boundaries_due: int = 2
    #: a forked execution's source record (its start record is that record, under this execution)
    fork_of: GraphCheckpoint | None = None
    #: ``next_seq`` when this process took the execution up (records written since: the difference)
    first_seq: int = attrs.field(default=attrs.Factory(lambda self: self.next_seq, takes_self=True))
    #: the origin of each pending input (replay by what a visit consumed, see ``deliveries``)
    deliveries: Deliveries = attrs.field(factory=Deliveries)
    #: per node, the origins of the pending inputs the resumed checkpoint stored (restored in that
    #: order once the replayed prefix is done)
    frontier: dict[str, list[Any]] | None = None
    #: NodeMessage dumps by object identity: outputs are only re-dumped when a visit replaced them
    dumps: dict[int, tuple[Any, Any]] = attrs.field(factory=dict)
    #: node states as of the last snapshot; only nodes in ``dirty`` (visited, or fed by a visited
    #: node) are read again, so a checkpoint costs what changed, not the size of the graph
    node_states: dict[str, Any] = attrs.field(factory=dict)
    dirty: set[str] | None = None  # None: every node
    #: nodes whose entry in ``node_states`` has pending inputs (the record's ``current_node``)
    waiting: set[str] = attrs.field(factory=set)
    graph_metadata: dict[str, Any] | None = None  # built once per execution (``_graph_metadata``)
    #: graph state as last stored, per key: the value itself if immutable, else its JSON; the next
    #: checkpoint stores only keys whose mark differs. None: the next one stores the whole state.
    state_marks: dict[str, Any] | None = None
    #: stores records as CheckpointConfig.durability says (set for the run by ``_execute``); under
    #: "exit" only the newest is kept, as each record then holds the full journal
    writes: DurableWriter = attrs.field(factory=lambda: DurableWriter("sync"))
    report: RecoveryReport | None = None
    failure: FailureInfo | None = None
    #: last superstep covered by the checkpoint this execution resumed from (-1: fresh run)
    resumed_through: int = -1
    #: journal visits already in stored checkpoints; the next checkpoint stores only the ones after
    persisted: int = 0
    checkpoints_since_full: int = 0
    allow_unsafe_rerun: bool = False
    #: per adapter node (agent): its state as last stored, the base of the next delta
    extras_stored: dict[str, Any] = attrs.field(factory=dict)
    #: per node with a visit in flight: (its ``inflight`` entry as last stored, records since a whole
    #: one); the entry is the base of the next in-flight delta
    inflight_stored: dict[str, tuple[dict[str, Any], int]] = attrs.field(factory=dict)
    #: which optional hooks have implementations, read once per run (a plugin registered while a
    #: run is going takes effect from the next run)
    node_hooks: bool = False
    policy_hooks: bool = False
    post_checkpoint_hooks: bool = False


class CheckpointedGraph:
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
    ) -> None:
        self.graph = graph
        self.config = config or CheckpointConfig()
        if not isinstance(self.config, CheckpointConfig):
            raise ConfigError(f"config must be a CheckpointConfig, got {type(self.config).__name__}")
        self._keys = node_keys(graph, node_ids)
        self._nodes_by_key = {self._keys[id(n)]: n for n in ordered_nodes(graph)}
        self._node_order = {key: position for position, key in enumerate(self._nodes_by_key)}
        edges = [edge for node in self._nodes_by_key.values() for edge in getattr(node, "edges", ())]
        #: event edges: a visit's published events are not journaled yet, so a replay past one is refused
        self._event_edges = any(getattr(edge, "is_event_driven", False) for edge in edges)
        #: timer edges fire by wall-clock time: their visits replay in other supersteps than they ran in,
        #: so replay is checked by visit, not by superstep
        self._timed_edges = any((getattr(edge, "delay_seconds", None) or 0) > 0 for edge in edges)
        self.structure = structure_digest(graph, self._keys)
        self.graph_id = graph_id or self._default_graph_id(graph)
        self.graph_version = graph_version or self.structure
        self.worker_id = worker_id or worker_identity()
        self.backend = self.config.open_backend()
        # a local backend's aput only calls put: calling put saves a coroutine per checkpoint
        self._put_directly = type(self.backend).aput is LocalBackend.aput
        self.codec: Codec = self.config.make_codec()
        # records are JSON: a state value's JSON tells whether it changed, and goes into the record as is
        self._json_records = self.codec.takes_json_fragments
        self._tags_heads = self.codec.index_tags.enabled
        self.policy = self.config.make_policy()
        self._policy_due = getattr(self.policy, "due", None)
        self.retention_rules = self.config.make_retention_rules()
        # A count rule is applied once this object wrote a fraction of the count since it last pruned
        # (at its first run, then amortized: storage stays within 1.5x the count); other rules every run.
        count = self.config.retention_count
        self._prune_every = max(1, count // 2) if count is not None and not self.config.retention_max_age_s \
            and not self.config.retention else 1
        self._written_since_prune = self._prune_every
        self.hooks = Hooks()
        self._has_adapters = False
        self._adapter_keys: set[str] = set()  # nodes whose state an adapter (agent) snapshots
        self._active: _Execution | None = None
        self._restored: GraphCheckpoint | None = None
        self._pending_skips: dict[str, Any] = {}
        #: NodeMessage dumps of the outputs the nodes held when the last run ended (see ``_end_of_run``)
        self._carried_dumps: dict[int, tuple[Any, Any]] = {}
        self.last_recovery: RecoveryReport | None = None
        self._wrap_nodes()
        self._register_lifecycle_hooks()

    # ------------------------------------------------------------------------------------------
    # setup
    @staticmethod
    def _default_graph_id(graph: Any) -> str:
        gid = getattr(graph, "id", None)
        if isinstance(gid, str) and gid and not (len(gid) == 32 and all(c in "0123456789abcdef" for c in gid)):
            return gid
        return type(graph).__name__ if type(graph).__name__ != "Graph" else f"graph-{structure_digest(graph, node_keys(graph))}"

    def _wrap_nodes(self) -> None:
        # Only a node with two parents or more can hold inputs whose order differs between processes;
        # one parent delivers in its own visit order, so its inputs replay by visit number alone.
        parents: dict[str, set[str]] = {}
        for key, node in self._nodes_by_key.items():
            for edge in getattr(node, "edges", ()):
                target = self._keys.get(id(edge.to_node))
                if target is not None:
                    parents.setdefault(target, set()).add(key)
        self._fan_in = {key for key, sources in parents.items() if len(sources) > 1}
        for key, node in self._nodes_by_key.items():
            if getattr(node, "_spark_ckpt_wrapped", None) is self:
                continue
            adapter = node_state_adapter_for(node) or self._agent_adapter_for(node)
            if adapter is not None:
                adapter.prepare(node, self)
                self._has_adapters = True
                self._adapter_keys.add(key)
            original_do = node.do
            node.do = self._make_do_wrapper(node, key, original_do)
            if key in self._fan_in:
                node.receive_from_parent = self._make_receive_wrapper(node, key, node.receive_from_parent)
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

    def _register_lifecycle_hooks(self) -> None:
        _install_context_create_checkpoint()
        from spark.graphs.hooks import GraphLifecycleEvent

        self.graph.register_hook(GraphLifecycleEvent.AFTER_ITERATION, self._after_superstep)

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
    async def run(self, inputs: Any = None) -> Any:
        """Run the graph (same result, state and node order as the unwrapped graph), checkpointing it."""
        if not self.config.enabled:
            return await self.graph.run(inputs)
        execution = _Execution(execution_id=new_id("ex-"), run_input=_dump_run_input(inputs))
        return await self._execute(execution, inputs, start_state=None)

    async def _execute(self, ex: _Execution, inputs: Any, start_state: GraphCheckpoint | None) -> Any:
        if self._active is not None:
            raise SparkCkptError(
                f"graph {self.graph_id!r} is already running execution {self._active.execution_id}; "
                "a CheckpointedGraph runs one execution at a time (wrap another graph instance for parallel runs)"
            )
        # The start record lets a crash in the very first superstep be recovered. Written at once
        # (durability "sync"), it goes to the store with the lease, in one transaction where it can.
        start_with_lease = start_state is None and ex.lease is None and self.config.durability == "sync"
        if ex.lease is not None:  # taken by recovery a while ago (reads since): renewed before anything runs
            await self._renew_lease(ex)
        elif not start_with_lease:
            ex.lease = await self.backend.aacquire_lease(ex.execution_id, self.worker_id, self.config.lease_ttl_s)
            ex.lease_deadline = time.monotonic() + self.config.lease_ttl_s / 2
        self._active = ex
        ex.dumps.update(self._carried_dumps)
        ex.writes = DurableWriter(self.config.durability, newest_only=True)
        hooks = self.hooks
        ex.node_hooks, ex.policy_hooks = hooks.wants_node_events, hooks.wants_should_checkpoint
        ex.post_checkpoint_hooks = hooks.wants_post_checkpoint
        renewer = _LeaseRenewer(self, ex)
        try:
            if ex.fork_of is not None:
                await self._store(ex, self._fork_start(ex, ex.fork_of), wait=self.config.durability == "sync")
                ex.whole_boundaries_due = 1  # (that one was whole)
            elif start_state is None:
                await self._checkpoint(ex, status=RUNNING)
            elif ex.skip:  # skip requests are stored before anything runs, so a crash keeps them
                await self._store(ex, self._on_last_boundary(ex), wait=True)
            result = await self.graph.run(inputs)
        except BaseException as exc:
            await self._record_failure(ex, exc)
            raise
        else:
            await self._finish(ex, result)
            return result
        finally:
            renewer.stop()
            self._active = None
            self._end_of_run(ex)
            if ex.last_status != COMPLETED and ex.lease is not None:
                # A completed execution is never recovered, so its lease needs no release (one write
                # fewer per run); an unfinished one is released so another worker can take it over now.
                try:
                    await self.backend.arelease_lease(ex.lease)
                except Exception:  # releasing is an optimisation: the lease expires anyway
                    log.debug("lease release failed", exc_info=True)

    async def _finish(self, ex: _Execution, result: Any) -> None:
        if ex.replay:  # the graph ended inside the replayed prefix: it routed differently, nothing ran live
            (key, index), *_ = sorted(ex.replay)
            raise diverged(key, f"the run ended with {len(ex.replay)} journaled visit(s) not reached, the first "
                                f"{key}#{index}")
        if not ex.completed:
            await self._checkpoint(ex, status=COMPLETED, result=result)
        await ex.writes.flush()
        if ex.skip and ex.report is not None:
            ex.report.unused_skips = list(ex.skip)
            log.warning("skip_node(%s) was not used: that node had no further visit in execution %s",
                        ", ".join(ex.skip), ex.execution_id)
        self._written_since_prune += ex.next_seq - ex.first_seq
        if self.retention_rules and self._written_since_prune >= self._prune_every:
            self._written_since_prune = 0
            try:
                prune(self.backend, self.retention_rules, graph_id=self.graph_id, rebase=self._rebase)
            except Exception:
                log.warning("retention pruning failed; checkpoints kept", exc_info=True)

    async def _record_failure(self, ex: _Execution, exc: BaseException) -> None:
        """Fire on_failure and store a failed-status checkpoint; never masks ``exc``."""
        try:
            if ex.failure is None:  # failed outside a node visit (a hook, the backend, cancellation)
                ex.failure = FailureInfo(node_key="", index=-1, error_type=type(exc).__name__, error=str(exc))
            try:
                await ex.writes.flush()  # what is held or running is stored first, or known lost
            except Exception:
                log.warning("a checkpoint of execution %s could not be stored", ex.execution_id, exc_info=True)
            # Not after a lost lease (another worker owns the execution) or a divergent replay (nothing
            # ran live: the stored records are right as they are).
            if ex.last_blob is not None and not isinstance(exc, (LeaseError, RecoveryDivergedError)):
                # Same state as the last boundary stored (the failing superstep's effects are not kept).
                await self._store(ex, self._on_last_boundary(
                    ex, status=FAILED, failure=to_data(ex.failure), inflight=dict(ex.inflight)), wait=True)
            await ex.writes.flush()
        except BaseException:
            log.exception("could not record the failure of execution %s", ex.execution_id)

    # ------------------------------------------------------------------------------------------
    # node visits
    def _make_receive_wrapper(self, node: Any, key: str, original_receive: Any) -> Any:
        """Spark delivers a parent's output to ``node`` through ``receive_from_parent``: note which
        visit the appended input came from (``Deliveries``)."""
        keys = self._keys

        async def receive_from_parent(parent: Any, *args: Any, **kwargs: Any) -> Any:
            ex = self._active
            state = getattr(node, "_state", None)
            queue = state.get("pending_inputs") if isinstance(state, dict) else None
            before = len(queue) if ex is not None and queue is not None else -1
            result = await original_receive(parent, *args, **kwargs)
            if before >= 0 and len(queue) == before + 1:
                parent_key = keys.get(id(parent))
                if parent_key is not None:
                    ex.deliveries.delivered(key, queue[-1], [parent_key, ex.visit_counts.get(parent_key, 1) - 1])
            return result

        receive_from_parent.__wrapped__ = original_receive  # type: ignore[attr-defined]
        return receive_from_parent

    def _make_do_wrapper(self, node: Any, key: str, original_do: Any) -> Any:
        successors = {self._keys[id(e.to_node)] for e in getattr(node, "edges", ()) if id(e.to_node) in self._keys}
        visit_context = self._visit_context

        async def do(inputs: Any = None) -> Any:
            ex = self._active
            if ex is None:
                return await original_do(inputs)
            index = ex.visit_counts.get(key, 0)
            ex.visit_counts[key] = index + 1
            if ex.dirty is not None:
                ex.dirty.add(key)
                ex.dirty.update(successors)
            origin = ex.deliveries.consumed(key, inputs)
            if ex.replay:
                recorded = ex.replay.pop((key, index), None)
                if recorded is not None:
                    if recorded.input_from is not None and recorded.input_from != origin:
                        inputs, origin = self._recorded_input(ex, node, key, index, inputs, origin, recorded), recorded.input_from
                    return await self._replay_visit(ex, node, key, index, inputs, recorded)
            if ex.superstep <= ex.resumed_through and not self._timed_edges:  # not in the journal, inside its supersteps
                raise diverged(key, f"visit {index} in superstep {ex.superstep} is not in the journal")
            if ex.fenced is not None or time.monotonic() >= ex.lease_deadline:
                await self._check_lease(ex)  # before any live work: a stalled worker stops here
            if ex.skip and key in ex.skip:
                return await self._skip_visit(ex, node, key, index, inputs, origin)
            # a live visit (inline: this runs once per node visit)
            token = _current_visit.set(LazyVisit(visit_context, ex, key, index))
            started = time.time()
            t0 = time.perf_counter()
            try:
                if ex.node_hooks:
                    await self.hooks.pre_node(NodeEvent(self.graph_id, ex.execution_id, key, index, ex.superstep, node, inputs))
                try:
                    output = await original_do(inputs)
                except BaseException as exc:
                    await self._visit_failed(ex, node, key, index, inputs, exc)
                    raise
                duration = time.perf_counter() - t0
                entry = {"node_key": key, "index": index, "superstep": ex.superstep,
                         "output": self._dump_cached(ex, output), "status": "completed",
                         "started_at": started, "duration_s": duration}
                if origin is not None:
                    entry["input_from"] = origin
                ex.journal.append(entry)
                if ex.inflight:
                    ex.inflight.pop(key, None)
                    ex.inflight_stored.pop(key, None)
                if ex.report is not None:
                    ex.report.live.append((key, index))
                if ex.node_hooks:
                    await self.hooks.post_node(NodeEvent(self.graph_id, ex.execution_id, key, index, ex.superstep,
                                                         node, inputs, output, duration_s=duration))
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

    def _recorded_input(
        self, ex: _Execution, node: Any, key: str, index: int, inputs: Any, origin: Any, recorded: Visit
    ) -> Any:
        """The input a replayed visit consumed when it was journaled, when this process handed it another
        one (siblings delivered in another order): taken from the node's pending inputs, the one it was
        handed put back in its place. ``RecoveryDivergedError`` if no pending input is that one."""
        queue = node._state.get("pending_inputs")
        taken = ex.deliveries.take(key, queue, inputs, origin, recorded.input_from) if queue is not None else None
        if taken is not None:
            return taken
        if origin is None:
            return inputs  # handed an input delivered some other way: cannot tell, keep the journal's order
        raise diverged(key, f"visit {index} consumed the output of {recorded.input_from} when it was journaled, "
                            f"but that input is not waiting here (this process delivered {origin})")

    async def _check_lease(self, ex: _Execution) -> None:
        """Before a live visit once the lease is due (the renewer fell behind: a blocked loop, a stopped
        process): renew it now, or stop this worker with ``LeaseError`` if it was taken over."""
        if ex.fenced is None and ex.lease is not None:
            try:
                await self._renew_lease(ex)
            except LeaseError:
                pass  # recorded in ex.fenced
        if ex.fenced is not None:
            raise ex.fenced

    async def _renew_lease(self, ex: _Execution) -> None:
        ttl = self.config.lease_ttl_s
        try:
            ex.lease = await self.backend.arenew_lease(ex.lease, ttl)
        except LeaseError as exc:
            if ex.fenced is None:
                log.error("lost the lease on execution %s; this worker stops: %s", ex.execution_id, exc)
                ex.fenced = exc
            raise
        ex.lease_deadline = time.monotonic() + ttl / 2

    async def _visit_failed(self, ex: _Execution, node: Any, key: str, index: int, inputs: Any, exc: BaseException) -> None:
        if ex.failure is None:  # the first failure of the superstep is the one the caller sees
            ex.failure = FailureInfo(key, index, type(exc).__name__, str(exc), _plain_or_repr(_dump_message(inputs)))
        await self.hooks.on_failure(FailureEvent(
            self.graph_id, ex.execution_id, key, exc, type(exc).__name__, str(exc), node, inputs,
        ))

    def _visit_context(self, ex: _Execution, key: str, index: int) -> VisitContext:
        recovered = ex.inflight_recovered.get(key)
        if recovered is not None and recovered.get("visit_index") == index:
            recovered_data = recovered.get("data")
        else:
            recovered_data = None

        async def persist_inflight(data: Any) -> None:
            await self._persist_inflight(ex, key, index, data)

        return VisitContext(
            graph_id=self.graph_id, execution_id=ex.execution_id, node_key=key, visit_index=index,
            superstep=ex.superstep, backend=self.backend, codec=self.codec, hooks=self.hooks,
            config=self.config, lease=ex.lease,
            recovered_inflight=recovered_data, persist_inflight=persist_inflight,
            extras={"graph": self, "allow_unsafe_rerun": ex.allow_unsafe_rerun},
        )

    async def _replay_visit(self, ex: _Execution, node: Any, key: str, index: int, inputs: Any, visit: Visit) -> Any:
        output = _load_message(visit.output)
        node.outputs = output
        ex.journal.append(_visit_data(visit))
        if ex.report is not None:
            (ex.report.skipped if visit.status == "skipped" else ex.report.replayed).append((key, index))
        event = NodeEvent(self.graph_id, ex.execution_id, key, index, ex.superstep, node, inputs, output, replayed=True)
        await self.hooks.pre_node(attrs.evolve(event, output=None))
        await self.hooks.post_node(event)
        return output

    async def _skip_visit(self, ex: _Execution, node: Any, key: str, index: int, inputs: Any, origin: Any) -> Any:
        override = ex.skip.pop(key)
        output = inputs if override is None else _load_message(override)
        if not hasattr(output, "model_dump"):
            output = _load_message({"content": output})
        node.outputs = output
        ex.journal.append(_visit_data(
            Visit(key, index, ex.superstep, _dump_message(output), "skipped", time.time(), 0.0, origin)))
        if ex.report is not None:
            ex.report.skipped.append((key, index))
        return output

    async def _persist_inflight(self, ex: _Execution, key: str, index: int, data: Any) -> None:
        """Durably store a running visit's journal (agent calls) on top of the last boundary checkpoint."""
        ex.inflight[key] = {"visit_index": index, "data": data}
        await ex.writes.flush()  # the boundary it goes on is stored first
        if ex.last_blob is None:
            return
        await self._store(ex, self._on_last_boundary(ex, inflight=self._inflight_fields(ex)), wait=True)

    def _inflight_fields(self, ex: _Execution) -> dict[str, Any]:
        """The in-flight journals for an in-flight record: per visit, the changes since the record
        stored before (a visit making hundreds of calls stores each call once, not its whole journal
        again per call); whole the first time and every ``FULL_HISTORY_EVERY`` records."""
        fields: dict[str, Any] = {}
        for key, entry in ex.inflight.items():
            # a private copy: the next delta is computed against it
            entry = orjson.loads(dumps_data(entry, what=f"in-flight journal of node {key!r}"))
            stored = ex.inflight_stored.get(key)
            if stored is not None and stored[0]["visit_index"] == entry["visit_index"] and stored[1] < FULL_HISTORY_EVERY:
                fields[key] = {"visit_index": entry["visit_index"], _DELTA: agent_delta.diff(stored[0], entry)}
                ex.inflight_stored[key] = (entry, stored[1] + 1)
            else:
                fields[key] = entry
                ex.inflight_stored[key] = (entry, 0)
        return fields

    def _on_last_boundary(self, ex: _Execution, **changes: Any) -> dict[str, Any]:
        """A new record: the last boundary checkpoint's content with ``changes`` (new id and seq)."""
        data, _ = self.codec.decode_data(ex.last_blob)
        # its visits are stored already: the new record carries none, and starts where it ended
        data["history_start"] = data.get("history_start", 0) + len(data.get("execution_history", ()))
        data["execution_history"] = []
        data["node_extras"] = {}  # unchanged since the boundary record, which holds them
        # and so is the state: a record that repeated the boundary's changes would apply its appends twice
        data.update(partial_state=True, graph_state={}, node_states={}, removed_state=[], appended_state={},
                    run_input=None)
        data["status"], data["failure"] = RUNNING, None  # (the base may be a failure record we resume)
        data["base_seq"] = ex.last_seq  # its state is that record's, whatever was written after it
        # the journals still in flight, whole (never the base's own entries: they may be deltas against
        # records before it, which this record does not follow)
        data["inflight"] = dict(ex.inflight)
        data["skip_nodes"], data["skip_outputs"] = list(ex.skip), _skip_outputs(ex.skip)  # (still to apply)
        data.update(changes)
        data.update(checkpoint_id=canonical_checkpoint_id(ex.execution_id, ex.next_seq), seq=ex.next_seq,
                    timestamp=time.time())
        data["graph_metadata"] = self._graph_metadata(ex)
        return data

    # ------------------------------------------------------------------------------------------
    # superstep boundaries
    async def _after_superstep(self, context: Any) -> None:
        """At each superstep boundary (the only lifecycle hook used). Runs once per superstep, so it is
        kept flat: one coroutine from here to the backend's put on the common path."""
        ex = self._active
        if ex is None:
            return
        superstep = ex.superstep = context.iteration_index
        try:
            ex.supersteps_since += 1
            if ex.replay or superstep <= ex.resumed_through:
                # still inside the replayed prefix: the state is the restored checkpoint's, already stored
                ex.supersteps_since = 0
                if superstep >= ex.resumed_through and not self._timed_edges:
                    self._enter_live_part(ex)
                return
            if context.metadata.get("scheduled_successors", 1) == 0 and not self._graph_has_pending_work():
                if ex.policy_hooks or self._policy_due is None:
                    await self._ask_policy(ex, "final")  # they see it; the final checkpoint is taken regardless
                await self._checkpoint(ex, status=COMPLETED, result=context.last_output)
                return
            if ex.checkpoint_requested:
                wanted = await self._ask_policy(ex, "explicit")
            elif ex.policy_hooks or self._policy_due is None:
                wanted = await self._ask_policy(ex, "superstep")
            else:  # the common boundary: asked without building a decision object
                wanted = self._policy_due(ex.supersteps_since, time.monotonic() - ex.last_checkpoint_at)
            if wanted:
                await self._checkpoint(ex, status=RUNNING)
        finally:
            ex.superstep = superstep + 1  # the visits that follow belong to the next one

    def _enter_live_part(self, ex: _Execution) -> None:
        """At the end of the replayed prefix, before anything runs live: every journaled visit must have
        been replayed, and the pending inputs are put back in the order the checkpoint stored them
        (``RecoveryDivergedError`` when the replay did not reproduce the run that wrote the journal)."""
        if ex.replay:
            (key, index), *_ = sorted(ex.replay)
            raise diverged(key, f"{len(ex.replay)} journaled visit(s) were not reached, the first {key}#{index}")
        frontier, ex.frontier = ex.frontier, None
        for key, stored in (frontier or {}).items():
            node = self._nodes_by_key.get(key)
            queue = getattr(node, "_state", {}).get("pending_inputs") if node is not None else None
            if queue is not None:
                ex.deliveries.reorder(key, queue, stored)

    async def _ask_policy(self, ex: _Execution, reason: str) -> bool:
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

    # ------------------------------------------------------------------------------------------
    # taking checkpoints
    def _dump_cached(self, ex: _Execution, message: Any) -> Any:
        cached = ex.dumps.get(id(message))
        if cached is not None and cached[0] is message:
            return cached[1]
        if len(ex.dumps) > 4096:  # bound the cache on very long runs
            ex.dumps.clear()
        dumped = _dump_message(message)
        ex.dumps[id(message)] = (message, dumped)
        return dumped

    def _snapshot(self, ex: _Execution, status: str, result: Any = None) -> dict[str, Any]:
        """The checkpoint as plain data, in ``GraphCheckpoint``'s layout.

        Built directly (not through cattrs) and encoded at once, so no deep copy is needed: this runs
        at every superstep boundary and is most of the per-checkpoint overhead.
        """
        # Only nodes visited (or fed) since the last snapshot are read again: ``ex.node_states`` is
        # updated in place (it is encoded right away, so sharing it between records is safe).
        node_states = ex.node_states
        dirty, ex.dirty = ex.dirty, set()
        nodes = self._nodes_by_key
        waiting = ex.waiting
        for key in nodes if dirty is None else dirty:
            entry = node_states[key] = self._node_entry(ex, key, nodes[key])
            if "pending_inputs" in entry:
                waiting.add(key)
            else:
                waiting.discard(key)
        full = self._writes_full_record(ex, status)
        node_extras = self._extras_fields(ex, dirty, full) if self._has_adapters else {}
        seq = ex.next_seq
        if full:
            # visits not yet replayed belong to the history too (the start record of a forked execution)
            history_start, history = 0, ex.journal + [_visit_data(v) for v in ex.replay.values()]
        else:  # the visits since the last stored one
            history_start, history = ex.persisted, ex.journal[ex.persisted:]
        graph_state, appended, removed = self._graph_state_fields(ex, full)
        partial = removed is not None
        if partial and dirty is not None:  # only the nodes read again can have changed
            node_states = {key: node_states[key] for key in dirty}
        return {
            # unique without a random draw: execution ids are unique, and so is seq within one
            "checkpoint_id": ex.checkpoint_requested or canonical_checkpoint_id(ex.execution_id, seq),
            "seq": seq,
            "timestamp": time.time(),
            "graph_metadata": self._graph_metadata(ex),
            "status": status,
            "superstep": ex.superstep,
            "run_input": None if partial else ex.run_input,  # it never changes: the whole records hold it
            "graph_state": graph_state,
            "node_states": node_states,
            "partial_state": partial,
            "removed_state": removed or [],
            "appended_state": appended,
            "current_node": self._current_node(waiting),
            "execution_history": history,
            "history_start": history_start,
            "skip_nodes": list(ex.skip),
            "skip_outputs": _skip_outputs(ex.skip) if ex.skip else {},
            "failure": None,
            "result": _dump_message(result) if result is not None else None,
            "inflight": {},
            "node_extras": node_extras,
            "extras": {"structure": self.structure},
            "version": CONTENT_VERSION,
            "kind": GRAPH,
        }

    def _fork_start(self, ex: _Execution, source: GraphCheckpoint) -> dict[str, Any]:
        """A forked execution's start record: the (whole) source record as it is, under the new execution,
        so recovering the fork before its first boundary finds the journal, state, pending inputs and
        superstep the fork resumes from."""
        data = to_data(source)
        data.update(
            checkpoint_id=canonical_checkpoint_id(ex.execution_id, ex.next_seq), seq=ex.next_seq, timestamp=time.time(),
            graph_metadata=self._graph_metadata(ex), status=RUNNING, failure=None, result=None, base_seq=None,
            skip_nodes=list(ex.skip), skip_outputs=_skip_outputs(ex.skip), inflight=dict(ex.inflight),
            extras={"structure": self.structure, "forked_from": source.checkpoint_id}, version=CONTENT_VERSION,
        )
        return data

    def _graph_state_fields(
        self, ex: _Execution, full: bool
    ) -> tuple[dict[str, Any], dict[str, Any], list[str] | None]:
        """The graph state for a checkpoint: the whole state (removed None) when ``full`` or nothing is
        stored yet; else the keys whose value changed, the items appended to lists that only grew at
        their end, and the keys removed since the last checkpoint.

        Each stored key has a mark (``ex.state_marks``, see ``_state_mark``). A key whose value is the
        very object it is marked by is unchanged: an immutable value that stays put. One quick pass
        finds the other keys, and only those are compared: immutables set again (by type and value),
        and mutable values (by their JSON, so a list or dict changed in place is seen too).
        """
        state = self.graph.state
        raw = state.get_raw()
        marks = None if full else ex.state_marks
        if marks is None:
            return self._whole_state(ex, state, raw), {}, None
        changed: dict[str, Any] = {}
        appended: dict[str, Any] = {}
        for key in [key for key, value in raw.items() if marks.get(key, _ABSENT) is not value]:
            if key[:2] == "__" and _is_bookkeeping(state, key):  # what ``get_snapshot`` leaves out
                continue
            mark, value = self._state_mark(raw[key])
            old = marks.get(key, _ABSENT)
            if old is not mark and (type(old) is not type(mark) or old != mark):
                items = _appended_json(old, mark)
                if items is None:
                    changed[key] = value
                else:
                    appended[key] = orjson.Fragment(items)
            marks[key] = mark  # (updated in place: the marks are this execution's own)
        if marks.keys() <= raw.keys():  # every key stored before is still there
            return changed, appended, []
        removed = [key for key in marks if key not in raw]
        for key in removed:
            del marks[key]
        return changed, appended, removed

    def _whole_state(self, ex: _Execution, state: Any, raw: dict[str, Any]) -> dict[str, Any]:
        """The whole graph state for a record, and its marks for the next one to compare with.

        The raw dict itself, not a copy, when it holds neither values already encoded as JSON nor
        Spark's bookkeeping keys: the record is encoded right away.
        """
        marks: dict[str, Any] = {}
        encoded: dict[str, Any] = {}  # key -> orjson.Fragment of a mutable value's JSON
        bookkeeping = False
        for key, value in raw.items():
            if key[:2] == "__" and _is_bookkeeping(state, key):
                bookkeeping = True
                continue
            marks[key], stored = self._state_mark(value)
            if stored is not value:
                encoded[key] = stored
        ex.state_marks = marks
        whole = state.get_snapshot() if bookkeeping else raw
        return {**whole, **encoded} if encoded else whole

    def _state_mark(self, value: Any) -> tuple[Any, Any]:
        """``(mark, value to store)`` for a graph state value.

        An immutable value (str, int, float, bool, None; exact types, as a subclass could change) is its
        own mark: a large string that stays put costs nothing. When records are JSON, a mutable value is
        marked by its JSON, which also goes into the record as it is (encoded once). Another serializer
        may keep what JSON cannot tell apart (a tuple from a list), so there, as for a value that cannot
        be encoded (reported with its key path when the record is), the mark is new every time: such a
        value is stored at every checkpoint.
        """
        if type(value) in _IMMUTABLE:
            return value, value
        if not self._json_records:
            return object(), value
        try:
            mark = dumps_data(value)
        except EncodeError:
            return object(), value
        return mark, orjson.Fragment(mark)

    def _graph_metadata(self, ex: _Execution) -> dict[str, Any]:
        """The execution's ``graph_metadata``: one dict shared by its records (each is encoded at once)."""
        if ex.graph_metadata is None:
            ex.graph_metadata = {"graph_id": self.graph_id, "graph_version": self.graph_version,
                                 "execution_id": ex.execution_id}
        return ex.graph_metadata

    def _current_node(self, waiting: set[str]) -> str | None:
        """``current_node``: the node with input waiting, or several joined by commas in graph order."""
        if len(waiting) == 1:
            return next(iter(waiting))
        return ",".join(sorted(waiting, key=self._node_order.__getitem__)) or None

    def _node_entry(self, ex: _Execution, key: str, node: Any) -> dict[str, Any]:
        """A node's state for ``node_states``: only what differs from a fresh node (NodeSnapshot's
        defaults), so checkpoints stay small."""
        state = getattr(node, "_state", None) or {}
        entry: dict[str, Any] = {}
        if state.get("process_count"):
            entry["process_count"] = state["process_count"]
        if state.get("processing"):
            entry["processing"] = True
        pending = state.get("pending_inputs")
        if pending:
            entry["pending_inputs"] = [self._dump_cached(ex, m) for m in pending]
            if key in self._fan_in:
                entry["pending_from"] = ex.deliveries.origins(key, pending)
        outputs = self._dump_cached(ex, getattr(node, "outputs", None))
        if outputs:
            entry["outputs"] = outputs
        # a node with a state adapter (an agent) keeps its state in node_extras instead
        if key not in self._adapter_keys and not state.keys() <= _NODE_RUNTIME_KEYS:
            entry["custom"] = {k: v for k, v in state.items() if k not in _NODE_RUNTIME_KEYS}
        return entry

    def _writes_full_record(self, ex: _Execution, status: str) -> bool:
        """Whether this checkpoint stands alone (whole history, state and agent states) or holds only changes.

        Full: the final checkpoint (a finished execution is then readable from one record), "exit"
        durability (only the newest record is ever written), the first record this process writes for
        the execution (the start record, the first after a recovery, a forked execution's start), the
        record after the start one (a damaged start record then costs nothing), and every
        ``FULL_HISTORY_EVERY`` checkpoints: one damaged record costs at most that many supersteps.
        """
        full = bool(
            status == COMPLETED or self.config.durability == "exit" or ex.replay or ex.state_marks is None
            or ex.whole_boundaries_due or ex.checkpoints_since_full >= FULL_HISTORY_EVERY
        )
        ex.whole_boundaries_due = max(0, ex.whole_boundaries_due - 1)
        ex.checkpoints_since_full = 0 if full else ex.checkpoints_since_full + 1
        return full

    def _extras_fields(self, ex: _Execution, dirty: set[str] | None, full: bool) -> dict[str, Any]:
        """Adapter state (agents) for ``node_extras``: whole, or the changes since the stored one.

        A node not visited since the last checkpoint is left out (unchanged). A visited one stores a
        delta against its last stored state, so a conversation that grows turn by turn stores each
        message once instead of the whole conversation at every checkpoint.
        """
        extras: dict[str, Any] = {}
        for key, node in self._nodes_by_key.items():
            adapter = node_state_adapter_for(node)
            if adapter is None or not (full or dirty is None or key in dirty or key not in ex.extras_stored):
                continue
            # a private copy: the next delta is computed against it after the agent changed its state
            state = orjson.loads(dumps_data(adapter.snapshot(node), what=f"state of node {key!r}"))
            previous = ex.extras_stored.get(key)
            if full or previous is None:
                extras[key] = state
            else:
                ops = agent_delta.diff(previous, state)
                if ops:
                    extras[key] = {_DELTA: ops}
            ex.extras_stored[key] = state
        return extras

    async def _checkpoint(self, ex: _Execution, *, status: str, result: Any = None) -> dict[str, Any]:
        record = self._snapshot(ex, status, result)
        ex.completed = ex.completed or status == COMPLETED
        ex.checkpoint_requested = None
        ex.supersteps_since = 0
        ex.last_checkpoint_at = time.monotonic()
        await self._store(ex, record, wait=self.config.durability == "sync")
        return record

    def _encode(self, data: dict[str, Any]) -> tuple[CheckpointHeader, bytes]:
        meta = data["graph_metadata"]
        identity = Identity(meta["graph_id"], meta["execution_id"], data["seq"])
        try:
            blob = self.codec.encode_data(data, identity)
        except CodecError as exc:
            raise type(exc)(f"graph {meta['graph_id']!r}, checkpoint seq {data['seq']}: {exc}") from None
        # (positional: a third cheaper than keywords, once per checkpoint)
        header = CheckpointHeader(data["checkpoint_id"], meta["graph_id"], meta["execution_id"], data["seq"],
                                  data["timestamp"], data["status"], GRAPH, len(blob))
        if self._tags_heads:
            header = attrs.evolve(header, tag=self.codec.index_tags.tag(header))
        return header, blob

    async def _store(self, ex: _Execution, data: dict[str, Any], *, wait: bool) -> None:
        """Encode now (so later mutation cannot leak in), write according to the durability mode."""
        header, blob = self._encode(data)
        ex.next_seq = header.seq + 1
        ex.persisted = max(ex.persisted, data["history_start"] + len(data["execution_history"]))
        # in-flight records stack on the boundary record; they never replace it
        boundary = not (data["inflight"] and header.status == RUNNING)
        if wait and ex.writes.idle:  # durability "sync": the write is stored before the next superstep
            await self._put(ex, header, blob, boundary)
        else:
            await ex.writes.write(lambda: self._put(ex, header, blob, boundary), wait=wait)

    async def _put(self, ex: _Execution, header: CheckpointHeader, blob: bytes, boundary: bool) -> None:
        if ex.lease is None:  # a fresh execution's start record: takes the lease in the same write
            ex.lease = await self.backend.astart_execution(header, blob, self.worker_id, self.config.lease_ttl_s)
            ex.lease_deadline = time.monotonic() + self.config.lease_ttl_s / 2
        elif self._put_directly:
            self.backend.put(header, blob, lease=ex.lease)
        else:
            await self.backend.aput(header, blob, lease=ex.lease)
        if boundary:  # (only once stored: records built on it must never stack on a lost one)
            ex.last_blob, ex.last_status, ex.last_seq = blob, header.status, header.seq
        if ex.post_checkpoint_hooks:
            await self.hooks.post_checkpoint(CheckpointSaved(header=header, backend=self.backend.describe()))

    # ------------------------------------------------------------------------------------------
    # reading checkpoints
    def _decode(self, blob: bytes, header: CheckpointHeader | None = None) -> GraphCheckpoint:
        expected = Identity(header.graph_id, header.execution_id, header.seq) if header is not None else None
        record = self.codec.decode(blob, GraphCheckpoint, expected)
        if record.version > GraphCheckpoint.__attrs_attrs__.version.default:
            from ..errors import UnsupportedFormatError

            raise UnsupportedFormatError(
                f"checkpoint {record.checkpoint_id} has content version {record.version}, newer than this "
                "spark-ckpt understands; upgrade spark-ckpt"
            )
        return record

    def _load(self, checkpoint_id: str) -> GraphCheckpoint:
        stored = self.backend.get(checkpoint_id)
        record = self._decode(stored.blob, stored.header)
        self._check_graph(record)
        return self._with_full_history(record)

    def _with_full_history(
        self, record: GraphCheckpoint, decoded: dict[int, GraphCheckpoint] | None = None
    ) -> GraphCheckpoint:
        """``record`` made whole (``engine.chain``): the execution's entire journal, state and every
        adapter node's state, read back from its earlier checkpoints. ``decoded``: records already
        decoded, by seq (filled as more are read)."""
        cache = {} if decoded is None else decoded

        def earlier() -> Any:  # listed only if the record does not stand alone
            yield from self.backend.list(execution_id=record.execution_id)

        def load(header: CheckpointHeader) -> GraphCheckpoint:
            found = cache.get(header.seq)
            if found is None:
                found = cache[header.seq] = self._decode(self.backend.get(header.checkpoint_id).blob, header)
            return found

        return chain.make_whole(record, earlier(), load, self._adapter_keys)

    def _rebase(self, header: CheckpointHeader) -> int | None:
        """Make a record stand alone in place, so retention can delete the ones before it."""
        return records.rebase(self.backend, self.codec, header, self._adapter_keys)

    def _check_graph(self, record: GraphCheckpoint) -> None:
        if record.kind != GRAPH:
            raise GraphMismatchError(f"checkpoint {record.checkpoint_id} is an {record.kind} checkpoint, not a graph's")
        if record.graph_id != self.graph_id:
            raise GraphMismatchError(
                f"checkpoint {record.checkpoint_id} belongs to graph {record.graph_id!r}, not {self.graph_id!r}; "
                "pass the matching graph_id to checkpointed()"
            )
        stored_structure = record.extras.get("structure")
        if stored_structure and stored_structure != self.structure and not self.config.allow_graph_change:
            raise GraphMismatchError(
                f"graph {self.graph_id!r} changed structure since checkpoint {record.checkpoint_id} was written "
                f"(structure {stored_structure} -> {self.structure}): replaying its journal could route "
                "differently. Restore the previous graph code, or set CheckpointConfig(allow_graph_change=True) "
                "if the change is compatible"
            )

    def list_checkpoints(self, limit: int | None = None, *, execution_id: str | None = None) -> list[CheckpointHeader]:
        """Headers of this graph's checkpoints, newest first."""
        return self.backend.list(graph_id=self.graph_id, execution_id=execution_id, limit=limit)

    def get_last_checkpoint(self) -> GraphCheckpoint | None:
        """The newest checkpoint of this graph (any execution), or None."""
        return self.get_checkpoint(offset=0, missing_ok=True)

    def get_checkpoint(self, offset: int = 0, *, missing_ok: bool = False) -> GraphCheckpoint | None:
        """The checkpoint ``offset`` places before the newest (0 = newest)."""
        if offset < 0:
            raise ConfigError(f"offset must be >= 0, got {offset}")
        headers = self.backend.list(graph_id=self.graph_id, limit=offset + 1)
        if len(headers) <= offset:
            if missing_ok:
                return None
            raise CheckpointNotFoundError(
                f"graph {self.graph_id!r} has {len(headers)} checkpoint(s); none at offset {offset}"
            )
        header = headers[offset]
        return self._with_full_history(self._decode(self.backend.get(header.checkpoint_id).blob, header))

    # ------------------------------------------------------------------------------------------
    # manual checkpoint control (the guide's API)
    def create_checkpoint(self) -> GraphCheckpoint:
        """Snapshot the graph now and store it.

        Outside a run it becomes a standalone, completed execution (a restore point that recovery never
        picks on its own); inside a node, use ``await checkpoint_now()`` instead.
        """
        if self._active is not None:
            raise SparkCkptError(
                "create_checkpoint() was called during a run; from inside a node use "
                "`await spark_ckpt.checkpoint_now()` (or `await context.create_checkpoint()`)"
            )
        ex = _Execution(execution_id=new_id("ex-"), run_input=None)
        data = self._snapshot(ex, COMPLETED)
        data["extras"]["manual"] = True
        header, blob = self._encode(data)
        self.backend.put(header, blob)
        return self._decode(blob, header)

    def save_checkpoint(self, path: str | os.PathLike[str], checkpoint: GraphCheckpoint | str | None = None) -> Path:
        """Write a checkpoint (default: the newest) to ``path`` as its verified, encoded bytes."""
        if checkpoint is None:
            checkpoint = self.get_last_checkpoint() or self.create_checkpoint()
        record = self._with_full_history(self._resolve(checkpoint))
        target = Path(path)
        # re-encoded with the whole history, so the file stands alone
        blob = self.codec.encode(record, Identity(record.graph_id, record.execution_id, record.seq))
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            from ..errors import BackendError

            raise BackendError(f"cannot write checkpoint file {target}: {exc.strerror}; choose a writable path") from None
        return target

    def load_from_checkpoint(self, path: str | os.PathLike[str], *, restore: bool = True) -> GraphCheckpoint:
        """Read a file written by ``save_checkpoint``, verify it belongs to this graph, restore it."""
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise CheckpointNotFoundError(f"cannot read checkpoint file {path}: {exc.strerror}") from None
        record = self._decode(blob)
        self._check_graph(record)
        if restore:
            self._restore_into_graph(record)
            self._restored = record
        return record

    def restore_from_checkpoint(self, checkpoint: GraphCheckpoint | str) -> GraphCheckpoint:
        """Load graph and node state from a checkpoint (or its id); ``continue_from_checkpoint`` resumes it."""
        record = self._resolve(checkpoint)
        self._check_graph(record)
        self._restore_into_graph(record)
        self._restored = record
        return record

    def _resolve(self, checkpoint: GraphCheckpoint | str) -> GraphCheckpoint:
        if isinstance(checkpoint, GraphCheckpoint):
            return checkpoint
        if isinstance(checkpoint, str):
            return self._load(checkpoint)
        raise ConfigError(f"expected a GraphCheckpoint or a checkpoint id, got {type(checkpoint).__name__}")

    def get_current_node(self) -> str | None:
        """Key of the node that failed (or runs next) in the restored checkpoint."""
        record = self._restored or self.get_last_checkpoint()
        if record is None:
            return None
        if record.failure is not None and record.failure.node_key:
            return record.failure.node_key
        return record.current_node

    def skip_node(self, node: Any, output: Any = None) -> None:
        """On the next continuation (``continue_from_checkpoint`` or ``recover_and_continue``), do not
        run ``node``'s next visit: pass its input through as its output (or use ``output``), so its
        successors still run. The request is stored with the continuation, so a crash keeps it; one
        the continuation never reaches is listed in ``last_recovery.unused_skips``."""
        key = self.node_key(node)
        if output is None:
            self._pending_skips[key] = None
            return
        data = _dump_message(output) if hasattr(output, "model_dump") else {"content": output}
        dumps_data(data, what=f"skip_node({key!r}) output")  # refused now, not when it is stored
        self._pending_skips[key] = data

    def get_state_snapshot(self) -> dict[str, Any]:
        """A deep copy of the graph state."""
        return copy.deepcopy(self.graph.state.get_snapshot())

    # ------------------------------------------------------------------------------------------
    # recovery
    async def recover_and_continue(
        self, *, execution_id: str | None = None, wait: bool | float = False, allow_unsafe_rerun: bool = False
    ) -> Any:
        """Continue the newest unfinished execution of this graph, or ``execution_id`` (after a failure
        or a crash).

        Completed visits are replayed from the journal, not executed again. Raises
        ``NothingToRecoverError`` when there is no unfinished execution (it never starts afresh).
        If another live worker owns the execution, raises ``LeaseError`` (``wait=True`` or a number of
        seconds: wait for that worker to finish or for its lease to expire instead). An execution that
        has completed (another worker finished it, also while this one waited) is not run again: its
        stored result is returned and ``last_recovery.already_completed`` is True.

        Refuses, before anything runs: ``MissingCheckpointError`` when checkpoints the executions index
        says were written are gone, ``UnrecoverableExecutionError`` when none verifies,
        ``RecoveryDivergedError`` when replaying the journal does not reproduce the run. An agent tool
        marked not safe to re-run that was in flight at the crash raises ``UnsafeToRetryError``;
        ``allow_unsafe_rerun=True`` runs it again (after you checked its side effect).
        """
        if execution_id is None:
            execution_id = await self._newest_unfinished()
        lease, head = await self._claim(execution_id, wait)
        if lease is None:
            return self._completed_result(head)
        try:
            record, fell_back = await self._latest_verified(execution_id, head)
        except BaseException:
            await self._release_quietly(lease)
            raise
        return await self._continue(record, same_execution=True, fell_back=fell_back, lease=lease,
                                    next_seq=head.seq + 1, allow_unsafe_rerun=allow_unsafe_rerun)

    async def _newest_unfinished(self) -> str:
        unfinished = [h for h in await self.backend.aexecutions(graph_id=self.graph_id, unfinished_only=True)
                      if h.kind == GRAPH]
        if unfinished:
            return unfinished[0].execution_id
        message = (f"graph {self.graph_id!r} has no unfinished execution in {self.backend.describe()}; "
                   "nothing to recover. Start a new run with `await graph.run(inputs)`")
        others = sorted({h.graph_id for h in await self.backend.aexecutions(unfinished_only=True, limit=50)})
        if others:
            message += f" (unfinished executions exist for graph id(s) {', '.join(map(repr, others[:5]))})"
        raise NothingToRecoverError(message)

    async def _head(self, execution_id: str) -> CheckpointHeader | None:
        """The execution's head in the executions index, authenticated when encryption is on."""
        head = await self.backend.aexecution_head(execution_id)
        if head is not None:
            self.codec.index_tags.check(head)
        return head

    async def _claim(self, execution_id: str, wait: bool | float) -> tuple[Lease | None, CheckpointHeader]:
        """The lease of an unfinished execution, or ``(None, head)`` once it completed (``leases.claim``)."""
        async def read_head() -> CheckpointHeader:
            head = await self._head(execution_id)
            if head is None or head.graph_id != self.graph_id or head.kind != GRAPH:
                raise NothingToRecoverError(
                    f"graph {self.graph_id!r} has no execution {execution_id!r} in {self.backend.describe()}"
                )
            return head

        return await claim(self.backend, execution_id, self.worker_id, self.config.lease_ttl_s, wait, read_head)

    def _completed_result(self, head: CheckpointHeader) -> Any:
        """A completed execution's stored result (its graph state restored), run nothing again."""
        try:
            stored = self.backend.get(head.checkpoint_id)
        except CheckpointNotFoundError:
            raise MissingCheckpointError(
                f"execution {head.execution_id} of graph {self.graph_id!r} completed (executions index, seq "
                f"{head.seq}), but its final checkpoint {head.checkpoint_id} is gone; it is not run again. "
                "Restore that checkpoint from a backup to read its result"
            ) from None
        record = self._decode(stored.blob, stored.header)
        self._check_graph(record)
        record = self._with_full_history(record)
        self._restore_into_graph(record)
        self.last_recovery = RecoveryReport(execution_id=head.execution_id, from_checkpoint=record.checkpoint_id,
                                            already_completed=True)
        log.info("execution %s had already completed; returning its stored result", head.execution_id)
        return _load_message(record.result) if record.result is not None else None

    async def continue_from_checkpoint(self, checkpoint: GraphCheckpoint | str | None = None) -> Any:
        """Continue from the restored checkpoint (``restore_from_checkpoint``) or the given one.

        Continuing the newest checkpoint of an unfinished execution continues that execution; any other
        checkpoint starts a new execution forked from it (its history is never overwritten). Pending
        ``skip_node`` requests apply to the continuation.
        """
        if checkpoint is not None:
            self.restore_from_checkpoint(checkpoint)
        record = self._restored or self.get_last_checkpoint()
        if record is None:
            raise NothingToRecoverError(f"graph {self.graph_id!r} has no checkpoint to continue from")
        try:
            head = await self._head(record.execution_id)
        except CodecError:  # an index entry that does not authenticate: never continue in place
            head = None
        if head is not None and head.checkpoint_id == record.checkpoint_id and head.status != COMPLETED:
            lease, head = await self._claim(record.execution_id, wait=False)
            if lease is not None and head.checkpoint_id == record.checkpoint_id:
                return await self._continue(record, same_execution=True, fell_back=[], lease=lease,
                                            next_seq=head.seq + 1)
            if lease is not None:  # another worker moved the execution on meanwhile: this record is older now
                await self._release_quietly(lease)
        return await self._continue(record, same_execution=False, fell_back=[])

    async def _latest_verified(self, execution_id: str, head: CheckpointHeader) -> tuple[GraphCheckpoint, list[str]]:
        """Newest checkpoint of the execution that decodes, verifies and can be made whole; earlier ones
        when it does not (reported in ``fell_back``). Refuses when checkpoints behind the head are gone."""
        headers = sorted(await self.backend.alist(execution_id=execution_id), key=lambda h: h.seq, reverse=True)
        newest = headers[0].seq if headers else None
        fell_back: list[str] = []
        if (newest is None or newest < head.seq) and await self._present_but_damaged(head):
            fell_back.append(head.checkpoint_id)  # left out of listings (a damaged file header): damaged, not gone
        elif newest is None or newest < head.seq:
            missing = head.seq - newest if newest is not None else head.seq + 1
            raise MissingCheckpointError(
                f"execution {execution_id} of graph {self.graph_id!r}: the executions index says checkpoint "
                f"seq {head.seq} ({head.status}) was written, but the newest stored is "
                f"{'seq ' + str(newest) if newest is not None else 'none'}: {missing} checkpoint(s) are gone "
                "(deleted, or the store was partly restored from an older backup). Continuing from what is "
                "left would run finished work again, so nothing was run. Restore the missing checkpoints, "
                "or fork from one you choose with continue_from_checkpoint(<id>)"
            )
        decoded: dict[int, GraphCheckpoint] = {}
        for header in headers:
            try:
                record = decoded.get(header.seq) or self._decode((await self.backend.aget(header.checkpoint_id)).blob, header)
                decoded[header.seq] = record
            except CheckpointNotFoundError:
                continue  # deleted since the listing
            except CorruptCheckpointError as exc:
                # torn, altered or swapped bytes: an earlier checkpoint may be intact. Key and format
                # problems (wrong key, plaintext refused ...) are not: every earlier one fails alike.
                log.warning("checkpoint %s failed to verify (%s); falling back to the previous one", header.checkpoint_id, exc)
                fell_back.append(header.checkpoint_id)
                continue
            self._check_graph(record)
            try:
                return self._with_full_history(record, decoded), fell_back
            except CorruptCheckpointError as exc:
                log.warning("checkpoint %s cannot be completed (%s); falling back", header.checkpoint_id, exc)
                fell_back.append(header.checkpoint_id)
                continue
        raise UnrecoverableExecutionError(
            f"execution {execution_id} of graph {self.graph_id!r} has no checkpoint that verifies "
            f"({len(fell_back)} failed: {', '.join(fell_back) or 'none stored'}); nothing was run. "
            "Run `spark-ckpt verify`; start a new run, or continue from a checkpoint file you kept"
        )

    async def _present_but_damaged(self, header: CheckpointHeader) -> bool:
        try:
            await self.backend.aget(header.checkpoint_id)
        except CheckpointNotFoundError:
            return False
        except CorruptCheckpointError:
            return True
        return True  # readable by id though not listed: recovery reads what is listed, and falls back

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self.backend.arelease_lease(lease)
        except Exception:  # releasing is an optimisation: the lease expires anyway
            log.debug("lease release failed", exc_info=True)

    async def _continue(
        self, record: GraphCheckpoint, *, same_execution: bool, fell_back: list[str], lease: Lease | None = None,
        next_seq: int = 0, allow_unsafe_rerun: bool = False,
    ) -> Any:
        try:
            if self._event_edges and record.execution_history:
                raise UnrecoverableExecutionError(
                    f"graph {self.graph_id!r} has event edges (on_event): the events its journaled visits "
                    "published are not replayed yet, so continuing could skip their subscribers. Nothing was "
                    f"run; checkpoint {record.checkpoint_id} stays as it is. Start a new run"
                )
            self._restore_into_graph(record, pending=False)  # replay delivers the pending inputs again
            skips = {**{k: None for k in record.skip_nodes}, **record.skip_outputs, **self._pending_skips}
            self._pending_skips = {}
            if same_execution:
                # numbered after the newest seq ever written (it may be a damaged one we passed over)
                ex = _Execution(execution_id=record.execution_id, run_input=record.run_input,
                                next_seq=max(next_seq, record.seq + 1), lease=lease)
                # in-flight journals and failures stack on the restored record
                ex.last_blob = (await self.backend.aget(record.checkpoint_id)).blob
                ex.last_status, ex.last_seq = RUNNING, record.seq
            else:
                ex = _Execution(execution_id=new_id("ex-"), run_input=record.run_input, fork_of=record)
            ex.replay = {(v.node_key, v.index): v for v in record.execution_history}
            ex.persisted = len(record.execution_history) if same_execution else 0
            ex.resumed_through = max((v.superstep for v in record.execution_history), default=-1)
            if record.version >= 4 and ex.resumed_through >= 0:
                ex.frontier = {key: snap.pending_from or [None] * len(snap.pending_inputs)
                               for key, snap in record.node_states.items()}
            ex.inflight_recovered = dict(record.inflight)
            ex.extras_stored = dict(record.node_extras) if same_execution else {}
            # still in flight until those visits complete: a failure record must keep them
            ex.inflight = dict(record.inflight)
            ex.allow_unsafe_rerun = allow_unsafe_rerun
            ex.skip = skips
            ex.report = RecoveryReport(execution_id=ex.execution_id, from_checkpoint=record.checkpoint_id, fell_back=fell_back)
            self.last_recovery = ex.report
            self._restored = None
            inputs = _load_run_input(record.run_input)
            return await self._execute(ex, inputs, start_state=record if same_execution else None)
        except BaseException:
            if lease is not None and self._active is None:
                await self._release_quietly(lease)
            raise

    def _restore_into_graph(self, record: GraphCheckpoint, *, pending: bool = True) -> None:
        """Graph state and per-node state from ``record``, with the pending inputs it stored (unless
        ``pending`` is False: a continuation's replay delivers them again)."""
        raw = self.graph.state.get_raw()
        preserved = {k: v for k, v in raw.items() if k.startswith("__")}
        raw.clear()
        raw.update(preserved)
        raw.update(copy.deepcopy(record.graph_state))
        for key, snapshot in record.node_states.items():
            node = self._nodes_by_key.get(key)
            if node is None:
                continue
            state = node._state
            for k in [k for k in state if k not in _NODE_RUNTIME_KEYS]:
                del state[k]
            state.update(copy.deepcopy(snapshot.custom))
            state["process_count"] = snapshot.process_count
            state["context_snapshot"] = None
            state["pending_inputs"].clear()
            if pending:
                state["pending_inputs"].extend(_load_message(m) for m in snapshot.pending_inputs)
            adapter = node_state_adapter_for(node)
            if adapter is not None and key in record.node_extras:
                adapter.restore(node, record.node_extras[key])

    def _end_of_run(self, ex: _Execution) -> None:
        """Drop Spark's context snapshots, and keep the dumps of the outputs the nodes still hold: the
        next run's start record reads every node again, and would otherwise re-dump each of them."""
        carried = {}
        for node in self._nodes_by_key.values():
            state = getattr(node, "_state", None)
            if isinstance(state, dict):
                state["context_snapshot"] = None
            outputs = getattr(node, "outputs", None)
            cached = ex.dumps.get(id(outputs))
            if cached is not None and cached[0] is outputs:
                carried[id(outputs)] = cached
        self._carried_dumps = carried

    # ------------------------------------------------------------------------------------------
    # checkpoint requests from inside a node
    def _request_checkpoint(self) -> str:
        ex = self._active
        if ex is None:
            raise SparkCkptError("no checkpointed run is active")
        if ex.checkpoint_requested is None:
            ex.checkpoint_requested = new_id("ck-")
        return ex.checkpoint_requested

    async def flush(self) -> None:
        """Wait until every checkpoint taken so far is stored (durability "async" or "exit").

        From inside a node it makes the checkpoints of the current run durable now; after a run it
        is a no-op (runs end flushed).
        """
        ex = self._active
        if ex is not None:
            await ex.writes.flush()

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"CheckpointedGraph(graph_id={self.graph_id!r}, backend={self.backend.describe()!r})"


# ----------------------------------------------------------------------------------------------
class _LeaseRenewer:
    """Renews the execution's lease every ttl/3 while it runs (``Backend.renew_lease``: the same
    token, so a worker whose lease was taken over while it stalled learns it and stops).

    A timer handle rather than a task: most runs finish long before the first renewal, and
    creating plus cancelling a task per run costs more than the whole checkpoint write.
    """

    def __init__(self, owner: CheckpointedGraph, ex: _Execution) -> None:
        self.owner, self.ex = owner, ex
        self.interval = owner.config.lease_ttl_s / 3
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = self.loop.call_later(self.interval, self._due)
        self.task: asyncio.Task | None = None

    def _due(self) -> None:
        self.task = self.loop.create_task(self._renew())

    async def _renew(self) -> None:
        if self.ex.lease is not None:
            try:
                await self.owner._renew_lease(self.ex)  # extends our token only, never takes a new one
            except LeaseError:
                return  # the execution was taken over: this worker stops (``_Execution.fenced``)
            except Exception:
                log.warning("lease renewal failed; retrying", exc_info=True)
        if self.handle is not None:
            self.handle = self.loop.call_later(self.interval, self._due)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.task is not None:
            self.task.cancel()


async def request_checkpoint(reason: str = "explicit") -> str:
    """Ask for a checkpoint at the end of the current superstep; returns its future id."""
    visit = current_visit()
    if visit is None:
        raise SparkCkptError(
            "checkpoint_now() must be awaited inside a node of a graph wrapped with spark_ckpt.checkpointed()"
        )
    owner = _owner_of(visit)
    return owner._request_checkpoint()


def _owner_of(visit: VisitContext) -> CheckpointedGraph:
    owner = visit.extras.get("graph")
    if owner is None:
        raise SparkCkptError("this visit does not belong to a CheckpointedGraph")
    return owner


def _install_context_create_checkpoint() -> None:
    """Give ``process()`` the guide's ``await context.create_checkpoint()``.

    ``ExecutionContext`` is a slots dataclass, so no attribute can be set on an instance; a method
    added to the class is the one way that costs nothing per visit (a per-visit context subclass
    made Spark's own visit ~30 us slower). Only this new name is added; nothing of Spark's changes.
    Outside a checkpointed run the method raises a clear ``SparkCkptError``.
    """
    from spark.nodes.types import ExecutionContext

    if getattr(ExecutionContext, "create_checkpoint", None) is None:
        async def create_checkpoint(self: Any) -> str:
            return await request_checkpoint()

        ExecutionContext.create_checkpoint = create_checkpoint  # type: ignore[attr-defined]


def _dump_run_input(inputs: Any) -> Any:
    """The run's input as data: {"kind": "message"|"dict"|"value", "value": ...}."""
    if inputs is None:
        return None
    if hasattr(inputs, "model_dump") and type(inputs).__name__ == "NodeMessage":
        return {"kind": "message", "value": _dump_message(inputs)}
    if type(inputs).__name__ == "Task":
        raise ConfigError("checkpointed graphs take plain inputs or a NodeMessage, not a Spark Task")
    if isinstance(inputs, dict):
        return {"kind": "dict", "value": inputs}
    return {"kind": "value", "value": inputs}


def _load_run_input(data: Any) -> Any:
    if data is None:
        return None
    if data["kind"] == "message":
        return _load_message(data["value"])
    return data["value"]


def _skip_outputs(skip: dict[str, Any]) -> dict[str, Any]:
    """The outputs ``skip_node`` requests were given (the rest pass their input through)."""
    return {key: output for key, output in skip.items() if output is not None}


def _plain_or_repr(value: Any) -> Any:
    try:
        dumps_data(value)
        return value
    except Exception:
        return repr(value)
