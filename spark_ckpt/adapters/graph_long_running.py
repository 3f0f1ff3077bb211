"""Long-running (LONG_RUNNING / RESUMABLE) Spark graphs: every visit committed per message, recovered
with no message lost and none processed twice.

Spark runs such a graph as continuous workers: each node's ``go()`` receives a message from its
mailbox, processes it, forwards its output to its successors' mailboxes and acks the message; no
``do()``, no supersteps. Nothing of Spark's code changes; for the length of a run this module puts
proxies in front of what ``go()`` touches (see ``engine.mailbox_ledger`` for the rules):

* each node's ``mailbox`` and each edge's ``channel``: a received message opens a *visit* (the node
  key, its visit index, the message id; a contextvar names it for everything the node's task does
  until its next receive); what the node sends while the visit is open is held back, tagged with a
  stable id (``node:index:n``, the initial message is ``initial``);
* the graph state's API (``get``/``set``/``update``/``delete``/``has``/``get_snapshot``/
  ``transaction``): writes are recorded for the visit that made them, reads note which uncommitted
  visits it depends on;
* the message's ``ack`` (called by ``go()`` after processing and forwarding): the visit commits, one
  record stored durably with the consumed message, the node's output and state, the committed graph
  state and the messages still queued per node; only then are its held messages delivered.

Recovery (same execution) restores the committed graph and node state, drops what Spark puts into
the mailboxes at start (its initial message again) and refills every mailbox with the queued
messages in their order, then runs Spark's own long-lived loop again. A message consumed by a
committed visit is never processed again; one in flight at the crash is processed again (nothing of
that visit was committed).

A node not safe to re-run has its visit's start stored when its mailbox hands it a message, before it
processes it (``graph_unsafe_nodes``): recovery refuses to process that message again unless allowed.

Refused up front (``UnsupportedFeatureError``, nothing run or stored): agent nodes, event and timer
edges, forks of an execution and ``skip_node``. A graph state value changed in place (not through
the API) is detected when a visit touching that key commits and fails the run: no record could hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import logging
import time
from typing import TYPE_CHECKING, Any

from ..codec import to_data
from ..engine.journal import Journal
from ..engine.mailbox_ledger import INITIAL, MailboxLedger, Visit
from ..engine.unsafe_visits import UnsafeVisits, in_record
from ..engine.recovery import RecoveryReport
from ..codec.values import identical
from ..errors import UnsupportedFeatureError
from ..model import COMPLETED, RUNNING, FailureInfo, GraphCheckpoint, Lease, new_id
from . import graph_state, graph_unsafe_nodes
from .graph_state import dump_message, dump_run_input, is_bookkeeping, load_message, load_run_input, plain_or_repr

if TYPE_CHECKING:
    from .graph import CheckpointedGraph
    from .graph_run import Execution

log = logging.getLogger("spark_ckpt.graph")

#: the ChannelMessage metadata key carrying a message's stable id
MESSAGE_ID = "spark_ckpt_message_id"
#: Spark task types whose nodes run as continuous workers
LONG_LIVED = frozenset({"longrunning", "resumable"})

#: the visit the current task runs (set when its node's mailbox hands it a message)
_visit: contextvars.ContextVar[Visit | None] = contextvars.ContextVar("spark_ckpt_lr_visit", default=None)
#: inside the graph state's own methods (they read the snapshot to validate a write: not a user read)
_inside_state_api: contextvars.ContextVar[bool] = contextvars.ContextVar("spark_ckpt_lr_state_api", default=False)


def is_long_lived_input(run_input: Any) -> bool:
    """Whether a stored run input is a long-lived Spark task."""
    return (isinstance(run_input, dict) and run_input.get("kind") == "task"
            and (run_input.get("value") or {}).get("type") in LONG_LIVED)


class LongRunningDriver:
    """Runs and recovers the long-lived executions of one checkpointed graph."""

    def __init__(self, owner: CheckpointedGraph) -> None:
        self.owner = owner
        self.runner = owner._runner
        self.graph = owner.graph

    def check_supported(self, *, skips: Any = None, fork: bool = False) -> None:
        owner, what = self.owner, None
        if owner._adapter_keys:
            what = f"agent node(s) {', '.join(sorted(owner._adapter_keys))} (their calls are not journaled per message)"
        elif owner._event_edges or owner._timed_edges:
            what = "event or timer edges (their messages bypass the mailboxes' journal)"
        elif any(getattr(node, "human_policy", None) is not None for node in owner._nodes_by_key.values()):
            what = "a node human_policy (its answers are not journaled per message)"
        elif skips:
            what = "skip_node requests"
        elif fork:
            what = "continuing from a checkpoint that is not its execution's newest (a fork)"
        if what:
            raise UnsupportedFeatureError(
                f"graph {owner.graph_id!r}: a long-running task with {what} is not checkpointed by this "
                "version. Nothing was run or stored; run it on the unwrapped graph (graph.graph.run(task)), "
                "or without that feature"
            )

    # -- entry points --------------------------------------------------------------------------------
    async def run(self, task: Any, execution_id: str | None = None) -> Any:
        self.check_supported()
        await self.graph.state.initialize()  # Spark applies initial_state once, here: not over a later restore
        ex = self.runner.new_execution(execution_id or new_id("ex-"), dump_run_input(task))
        ex.named = execution_id is not None
        ledger = MailboxLedger(self._committed_copy())
        initial = {"id": INITIAL, **message_data(task.inputs, {"source": "graph", "kind": "initial"})}
        ledger.enqueue(self.owner.node_key(self.graph.start), initial)
        return await self._execute(ex, ledger, task, resumed=False)

    async def resume(self, record: GraphCheckpoint, *, same_execution: bool, fell_back: list[str], skips: Any,
                     lease: Lease | None, next_seq: int) -> Any:
        from ..backends.leases import release_quietly

        try:
            self.check_supported(skips=skips, fork=not same_execution)
            await self.graph.state.initialize()
            graph_state.restore_into_graph(self.graph, self.runner.nodes, record, pending=False)
            journal = Journal()
            journal.entries = [to_data(v) for v in record.execution_history]
            journal.persisted = len(journal.entries)
            counts: dict[str, int] = {}
            for visit in record.execution_history:
                counts[visit.node_key] = max(counts.get(visit.node_key, 0), visit.index + 1)
            markers = in_record(record.inflight, record.extras)
            if markers:  # (a recovery allowed to run them again): carried until they ran and were stored
                journal.unsafe = UnsafeVisits(markers)
            ex = self.runner.new_execution(record.execution_id, record.run_input, lease=lease, journal=journal,
                                           next_seq=max(next_seq, record.seq + 1))
            ex.writer.resumed_on((await self.owner.backend.aget(record.checkpoint_id)).blob, record.seq,
                                 record.checkpoint_id, writes=record.extras.get("writes"))
            ex.superstep = record.superstep
            ex.report = RecoveryReport(execution_id=ex.execution_id, from_checkpoint=record.checkpoint_id,
                                       fell_back=fell_back)
            self.owner.last_recovery = ex.report
            extras = record.extras or {}
            ledger = MailboxLedger(copy.deepcopy(record.graph_state), queued=extras.get("mailboxes") or {},
                                   counts=counts, externals=extras.get("externals", 0))
            return await self._execute(ex, ledger, load_run_input(record.run_input), resumed=True)
        except BaseException:
            if self.runner.active is None:
                await release_quietly(self.owner.backend, lease)
            raise

    def _committed_copy(self) -> dict[str, Any]:
        state = self.graph.state
        return {k: copy.deepcopy(v) for k, v in state.get_raw().items()
                if not (k.startswith("__") and is_bookkeeping(state, k))}

    # -- a run -------------------------------------------------------------------------------------------
    async def _execute(self, ex: Execution, ledger: MailboxLedger, task: Any, *, resumed: bool) -> Any:
        runner = self.runner
        renewer = await runner.take_up(ex, resumed=resumed)
        run = LongRun(self, ex, ledger, resumed=resumed)
        run.install()
        try:
            if not resumed:
                await run.store_record()  # the start record: the initial message queued
            result = await self.graph.run(task)
        except BaseException as exc:
            run.close()
            await runner._record_failure(ex, exc)
            raise
        else:
            try:
                await run.finish(result)
            except BaseException as exc:  # a change no record holds: the execution is not completed
                await runner._record_failure(ex, exc)
                raise
            return result
        finally:
            run.uninstall()
            await runner.put_down(ex, renewer)


def message_data(payload: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """A mailbox message as plain data (its id is added by the ledger)."""
    meta = {k: v for k, v in (metadata or {}).items() if k != MESSAGE_ID}
    if type(payload).__name__ == "NodeMessage":
        return {"payload": dump_message(payload), "node_message": True, "metadata": meta}
    return {"payload": payload, "metadata": meta}


def load_channel_message(entry: dict[str, Any]) -> Any:
    from spark.nodes.channels import ChannelMessage

    payload = load_message(entry["payload"]) if entry.get("node_message") else entry["payload"]
    return ChannelMessage(payload=payload, metadata={**entry.get("metadata", {}), MESSAGE_ID: entry["id"]})


class LongRun:
    """One long-lived run of the graph with its proxies installed (see the module docstring)."""

    def __init__(self, driver: LongRunningDriver, ex: Execution, ledger: MailboxLedger, *, resumed: bool) -> None:
        self.driver = driver
        self.owner = driver.owner
        self.runner = driver.runner
        self.graph = driver.graph
        self.ex = ex
        self.ledger = ledger
        self.resumed = resumed
        self.keys = self.owner._keys
        self.nodes = self.runner.nodes
        self.sync = self.owner.config.durability == "sync"
        self.lock = asyncio.Lock()
        self.committed_events: dict[Visit, asyncio.Event] = {}
        self.ready: asyncio.Event | None = None
        self.proxies: dict[str, MailboxProxy] = {}
        self.closed = False
        self._restore: list[Any] = []
        self.state_source = _CommittedState(self.graph.state, ledger)

    # -- installing (for the length of graph.run) --------------------------------------------------------
    def install(self) -> None:
        for key, node in self.nodes.items():
            self._set_attr(node, "go", self._go_wrapper(key, node, node.go))
        state = self.graph.state
        for name, wrapper in _state_wrappers(self, state).items():
            self._set_attr(state, name, wrapper)

    def _set_attr(self, obj: Any, name: str, value: Any) -> None:
        had = name in vars(obj)
        self._restore.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, value)

    def uninstall(self) -> None:
        for obj, name, had, previous in reversed(self._restore):
            if had:
                setattr(obj, name, previous)
            else:
                vars(obj).pop(name, None)
        self._restore.clear()
        for key, proxy in self.proxies.items():
            node = self.nodes[key]
            if node.mailbox is proxy:
                node.mailbox = proxy.inner
        for node in self.nodes.values():
            for edge in getattr(node, "edges", ()):
                if isinstance(edge.channel, EdgeProxy):
                    edge.channel = edge.channel.inner

    async def _mailboxes_ready(self) -> None:
        """On the first ``go()``: Spark has swapped in its mailboxes, wired its edge channels and sent
        its initial message. Put the proxies in front (at once, before any worker receives), then
        bring the mailboxes' content in line with the ledger."""
        if self.ready is not None:
            await self.ready.wait()
            return
        self.ready = asyncio.Event()
        try:
            for key, node in self.nodes.items():
                self.proxies[key] = node.mailbox = MailboxProxy(self, key, node.mailbox)
                for edge in getattr(node, "edges", ()):
                    target = self.keys.get(id(edge.to_node))
                    if edge.channel is not None and target is not None and not isinstance(edge.channel, EdgeProxy):
                        edge.channel = EdgeProxy(self, target, edge.channel)
            found_other = False
            for key, proxy in self.proxies.items():
                found = []
                while not proxy.inner.empty():
                    message = await proxy.inner.receive()
                    if not message.is_shutdown:
                        found.append(message)
                if not self.resumed:
                    # messages Spark restored into its mailboxes (resume_from): journaled ahead of the initial one
                    others = [m for m in found if (m.metadata or {}).get("kind") != "initial"]
                    for message in reversed(others):
                        self.ledger.external(key, message_data(message.payload, message.metadata), front=True)
                    found_other = found_other or bool(others)
                # what a recovery finds there (Spark's initial message again) is dropped: the ledger decides
                for entry in self.ledger.queued.get(key, ()):
                    await proxy.inner.send(load_channel_message(entry))
            if found_other:
                await self.store_record()
        finally:
            self.ready.set()

    def _go_wrapper(self, key: str, node: Any, original_go: Any) -> Any:
        run = self

        async def go() -> Any:
            await run._mailboxes_ready()
            try:
                result = await original_go()
            except BaseException as exc:
                visit = _visit.get()
                if visit is not None and not visit.committed:
                    run.ledger.abort(visit)
                    if run.ex.failure is None and not isinstance(exc, asyncio.CancelledError):
                        run.ex.failure = FailureInfo(key, visit.index, type(exc).__name__, str(exc),
                                                     plain_or_repr(_queued_entry(run.ledger, key, visit.message_id)))
                if not isinstance(exc, asyncio.CancelledError):
                    run.close()
                    run.graph.stop_all_nodes()  # the other workers stop after their message (nothing commits now)
                raise
            visit = _visit.get()
            if visit is not None and not visit.done:  # stopped between receiving and processing: dropped, as bare
                run.ledger.abort(visit)
            return result

        go.__wrapped__ = original_go  # type: ignore[attr-defined]
        return go

    # -- visits ------------------------------------------------------------------------------------------
    def begin(self, key: str, message: Any) -> None:
        message_id = (message.metadata or {}).get(MESSAGE_ID)
        if message_id is None:  # put into the mailbox past the proxies: journaled now, as being consumed
            message_id = self.ledger.external(key, message_data(message.payload, message.metadata), front=True)
        visit = self.ledger.begin(key, message_id, time.time())
        _visit.set(visit)
        original_ack = message.ack

        async def ack() -> None:
            await self.finished(visit)
            if original_ack is not None:
                result = original_ack()
                if asyncio.iscoroutine(result):
                    await result

        message.ack = ack

    async def unsafe_started(self, key: str, message: Any) -> None:
        """A node not safe to re-run was handed a message: store that its visit started before it
        processes it (``graph_unsafe_nodes``)."""
        visit = _visit.get()
        async with self.lock:
            data = graph_unsafe_nodes.marker(key, visit.index, self.ex.superstep, message.payload)
            await graph_unsafe_nodes.record_started(self.runner, self.ex, data)

    def hold(self, visit: Visit, target: str, message: Any, channel: Any) -> None:
        """A message sent during ``visit``: delivered once the visit committed."""
        message_id = self.ledger.sent(visit, target, message_data(message.payload, message.metadata), (channel, message))
        message.metadata = {**(message.metadata or {}), MESSAGE_ID: message_id}

    async def send_external(self, target: str, message: Any, channel: Any) -> None:
        """A message sent from outside any visit (a feeder): journaled durably, then delivered."""
        async with self.lock:
            message_id = self.ledger.external(target, message_data(message.payload, message.metadata))
            message.metadata = {**(message.metadata or {}), MESSAGE_ID: message_id}
            await self.store_record()
            await channel.send(message)

    async def finished(self, visit: Visit) -> None:
        if self.closed:
            return
        self.ledger.finished(visit)
        group = self.ledger.committable()
        if visit in group:
            await self.commit(group)
        else:  # it read or overwrote a write of a visit not committed yet: it commits with or after it
            await self.committed_events.setdefault(visit, asyncio.Event()).wait()

    async def commit(self, group: list[Visit]) -> None:
        ex, ledger = self.ex, self.ledger
        try:
            async with self.lock:
                if self.closed:
                    return
                changed = ledger.mutated_in_place(group, self.graph.state.get_raw(), _equal)
                if changed:
                    raise UnsupportedFeatureError(
                        f"graph {self.owner.graph_id!r}: graph state key(s) {', '.join(map(repr, changed))} changed "
                        "without the graph-state API (a value changed in place) while the graph ran long-lived; no "
                        "checkpoint can hold that. Write them with `await state.set(key, new_value)` (a new value)"
                    )
                ledger.commit(group)
                ex.superstep += 1
                now = time.time()
                for visit in group:
                    node = self.nodes[visit.node]
                    ex.journal.completed({
                        "node_key": visit.node, "index": visit.index, "superstep": ex.superstep,
                        "output": ex.dumps.dump(getattr(node, "outputs", None)), "status": "completed",
                        "started_at": visit.started_at, "duration_s": now - visit.started_at,
                        "input_from": visit.message_id,
                    })
                    if ex.journal.unsafe is not None:
                        graph_unsafe_nodes.visit_completed(ex, visit.node, visit.index)
                    if ex.report is not None:
                        ex.report.live.append((visit.node, visit.index))
                dirty = ex.builder.dirty
                if dirty is not None:
                    dirty.update(visit.node for visit in group)
                await self.store_record()
                for visit in group:
                    for _target, _id, _data, (channel, message) in visit.sends:
                        await channel.send(message)
        finally:
            for visit in group:
                self.committed_events.pop(visit, asyncio.Event()).set()

    async def store_record(self, *, status: str = RUNNING, result: Any = None) -> None:
        ex = self.ex
        data = ex.builder.build(self.state_source, seq=ex.writer.next_seq, status=status, superstep=ex.superstep,
                                journal=ex.journal, run_input=ex.run_input, skip={}, result=result)
        for entry in data["node_states"].values():
            entry.pop("processing", None)  # read while its own ack runs: not state to restore
        data["extras"].update(self.ledger.record_extras())
        if ex.journal.unsafe is not None:  # marked visits still running: a recovery must see them
            ex.journal.unsafe.carry_in_boundary(data)
        await self.runner.store(ex, data, wait=self.sync)

    def close(self) -> None:
        """The run failed or stopped: nothing commits from now on; waiting visits are released."""
        self.closed = True
        self.ledger.closed = True
        for event in self.committed_events.values():
            event.set()

    async def finish(self, result: Any) -> None:
        live = {k: v for k, v in self.graph.state.get_raw().items()
                if not (k.startswith("__") and is_bookkeeping(self.graph.state, k))}
        shadow = self.ledger.shadow
        differ = sorted(k for k in live.keys() | shadow.keys() if not _equal(live.get(k, _MISSING), shadow.get(k, _MISSING)))
        if differ:
            raise UnsupportedFeatureError(
                f"graph {self.owner.graph_id!r}: graph state key(s) {', '.join(map(repr, differ))} changed without "
                "the graph-state API (in place, or through get_raw()) while the graph ran long-lived: its checkpoints "
                "do not hold that change. Write them with `await state.set(key, new_value)`"
            )
        self.ex.builder.dirty = None  # every node read again for the final record
        await self.store_record(status=COMPLETED, result=dump_message(result) if result is not None else None)
        self.ex.completed = True
        await self.ex.writer.flush()
        self.runner.retention.after_run(self.owner.backend, self.owner.graph_id, self.ex.writer.written,
                                        self.owner._rebase)


_MISSING = object()


def _equal(a: Any, b: Any) -> bool:
    """The same value as stored (``identical``: ``==`` would miss 1 -> True or a Decimal's precision)."""
    try:
        return identical(a, b)
    except Exception:
        return False


def _queued_entry(ledger: MailboxLedger, key: str, message_id: str) -> Any:
    for entry in ledger.queued.get(key, ()):
        if entry["id"] == message_id:
            return entry
    return message_id


class _CommittedState:
    """The committed graph state as the record builder reads it (``record_builder.StateSource``)."""

    def __init__(self, state: Any, ledger: MailboxLedger) -> None:
        self.state = state
        self.ledger = ledger

    def raw(self) -> dict[str, Any]:
        return self.ledger.shadow

    def is_bookkeeping(self, key: str) -> bool:
        return is_bookkeeping(self.state, key)

    def without_bookkeeping(self) -> dict[str, Any]:
        return {k: v for k, v in self.ledger.shadow.items() if not (k.startswith("__") and self.is_bookkeeping(k))}


# -- the proxies -----------------------------------------------------------------------------------------
class HeldChannel:
    """In front of a channel (``target``: the node it delivers to): what a visit sends through it is held
    until the visit commits; sends from outside any visit are journaled as external; sentinels pass."""

    def __init__(self, run: LongRun, target: str, inner: Any) -> None:
        self.run = run
        self.target = target
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    async def receive(self) -> Any:
        return await self.inner.receive()

    async def send(self, message: Any) -> None:
        run = self.run
        if message.is_shutdown or run.closed:
            return await self.inner.send(message)
        visit = _visit.get()
        if visit is not None and not (visit.done or visit.aborted):
            run.hold(visit, self.target, message, self.inner)
            return None
        return await run.send_external(self.target, message, self.inner)

    def send_nowait(self, message: Any) -> None:
        if message.is_shutdown or self.run.closed:
            return self.inner.send_nowait(message)
        asyncio.get_running_loop().create_task(self.send(message))

    def empty(self) -> bool:
        return self.inner.empty()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MailboxProxy(HeldChannel):
    """In front of a node's mailbox: a received message also opens a visit."""

    async def receive(self) -> Any:
        run = self.run
        message = await self.inner.receive()
        if message.is_shutdown or run.closed:
            _visit.set(None)
            if not message.is_shutdown:  # the run failed: this worker stops (nothing it did would commit)
                from spark.nodes.channels import ChannelMessage

                return ChannelMessage(payload=None, is_shutdown=True, metadata={"reason": "graph_shutdown"})
            return message
        run.begin(self.target, message)
        if self.target in run.owner._unsafe_keys:  # stored before the node processes it
            await run.unsafe_started(self.target, message)
        return message


#: an edge's own channel: only its sends are held (its receiver is the node's mailbox loop)
EdgeProxy = HeldChannel


# -- the graph state's API --------------------------------------------------------------------------------
def _state_wrappers(run: LongRun, state: Any) -> dict[str, Any]:
    """Instance-level wrappers of the graph state's methods: writes recorded for the visit making them
    (outside a visit: committed at once), reads noting uncommitted writers (``MailboxLedger``)."""
    ledger = run.ledger
    original_get, original_set, original_update = state.get, state.set, state.update
    original_delete, original_has = state.delete, state.has
    original_snapshot, original_transaction = state.get_snapshot, state.transaction

    def own(key: str) -> bool:
        return not (key.startswith("__") and is_bookkeeping(state, key))

    async def get(key: str, default: Any = None) -> Any:
        ledger.read(_visit.get(), [key])
        return await original_get(key, default)

    async def has(key: str) -> bool:
        ledger.read(_visit.get(), [key])
        return await original_has(key)

    async def set(key: str, value: Any) -> None:
        token = _inside_state_api.set(True)
        try:
            await original_set(key, value)
        finally:
            _inside_state_api.reset(token)
        if own(key):
            ledger.wrote(_visit.get(), key, value)

    async def update(updates: dict[str, Any]) -> None:
        token = _inside_state_api.set(True)
        try:
            await original_update(updates)
        finally:
            _inside_state_api.reset(token)
        visit = _visit.get()
        for key, value in (updates or {}).items():
            if own(key):
                ledger.wrote(visit, key, value)

    async def delete(key: str) -> None:
        token = _inside_state_api.set(True)
        try:
            await original_delete(key)
        finally:
            _inside_state_api.reset(token)
        if own(key):
            ledger.wrote(_visit.get(), key, None, deleted=True)

    def get_snapshot() -> dict[str, Any]:
        if not _inside_state_api.get():
            ledger.read_all(_visit.get())
        return original_snapshot()

    @contextlib.asynccontextmanager
    async def transaction() -> Any:
        visit = _visit.get()
        ledger.read_all(visit)
        token = _inside_state_api.set(True)
        try:
            before = {k: copy.deepcopy(v) for k, v in state.get_raw().items() if own(k)}
            async with original_transaction() as values:
                yield values
            after = state.get_raw()
        finally:
            _inside_state_api.reset(token)
        for key in before.keys() - after.keys():
            ledger.wrote(visit, key, None, deleted=True)
        for key, value in after.items():
            if own(key) and (key not in before or not _equal(before[key], value)):
                ledger.wrote(visit, key, value)

    return {"get": get, "has": has, "set": set, "update": update, "delete": delete,
            "get_snapshot": get_snapshot, "transaction": transaction}
