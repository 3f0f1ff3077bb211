"""``CheckpointedAgent``: a Spark ``Agent`` whose runs survive ``kill -9`` without paying any call twice.

    agent = checkpointed(Agent(config), config=CheckpointConfig(backend="sqlite", path="runs.db"),
                         agent_id="support-bot")
    answer = await agent.run("hello")            # one run = one execution in the backend
    ...                                          # process killed in the middle of a tool loop
    agent = checkpointed(Agent(config), config=same_cfg, agent_id="support-bot")   # new process
    answer = await agent.recover_and_continue()  # journaled LLM/tool results are replayed, not re-paid

What is stored for agent ``agent_id`` (``CheckpointHeader.graph_id == agent_id``, ``kind == "agent"``):

* ``run_started`` (seq 0 of an execution): the run input, and the agent state if it changed since the
  last stored state;
* one ``call`` record per completed LLM response or tool result, written before the agent acts on it
  (plus a ``tool_started`` marker before a tool marked not safe to re-run);
* ``run_finished``: the state after the run (completed or failed). Once a run completed, its
  ``call`` records are deleted: the state holds the conversation, tool traces and costs.

States form a chain of deltas (``agent_delta``) with a full snapshot whenever the deltas written since
the last one outweigh it, so N turns store each message once. Used as a node of a checkpointed graph,
an agent gets the same journal through the graph's visit (``runtime.current_visit()``) and its full
snapshot lands in ``GraphCheckpoint.node_extras``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import attrs
import orjson
from spark.agents import Agent

from ..backends.leases import acquire_waiting, claim, worker_identity
from ..codec import Identity, from_data, to_data
from ..config import CheckpointConfig
from ..errors import (
    CheckpointNotFoundError, ConfigError, CorruptCheckpointError, MissingCheckpointError,
    NothingToRecoverError, SparkCkptError,
)
from ..model import AGENT, COMPLETED, FAILED, RUNNING, AgentCall, AgentRecord, CheckpointHeader, new_id
from ..plugins import Hooks
from . import agent_delta
from .agent_calls import (
    AgentBinding, CallSession, bind, binding_of, not_safe_to_rerun, unsafe_error,
    unsafe_in_flight,
)
from .agent_snapshot import (
    apply_snapshot, check_snapshot, fresh_config, isolate_hooks, jsonable, node_message_from_data,
    take_snapshot,
)
from .durability import DurableWriter
from .runtime import register_node_state_adapter

__all__ = ["CheckpointedAgent", "AgentNodeStateAdapter", "not_safe_to_rerun"]

#: write a full snapshot once the deltas since the last one add up to this many times its size
FULL_SNAPSHOT_RATIO = 4


class CheckpointedAgent:
    """A Spark ``Agent`` with durable runs, agent-call hooks, cost tracking and call replay.

    ``unsafe_tools``: names of tools that must not run twice (also ``@not_safe_to_rerun``).
    ``keep_call_journal``: keep the per-call records of completed runs (audit) instead of deleting them.
    Anything not defined here is read from the wrapped agent (``messages``, ``get_history()`` ...).
    """

    def __init__(
        self,
        agent: Agent,
        *,
        config: CheckpointConfig | None = None,
        agent_id: str | None = None,
        unsafe_tools: Iterable[str] = (),
        keep_call_journal: bool = False,
        hooks: Hooks | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise ConfigError(f"CheckpointedAgent wraps a spark.agents.Agent, got {type(agent).__name__}")
        agent_id = agent_id or agent.config.name
        if not agent_id:
            raise ConfigError(
                "give the agent a stable id: checkpointed(agent, agent_id='support-bot') (or AgentConfig(name=...)); "
                "a new process finds the agent's checkpoints by it"
            )
        self.agent = agent
        self.agent_id = str(agent_id)
        self.config = config or CheckpointConfig()
        self.keep_call_journal = keep_call_journal
        self._hooks = hooks or Hooks()
        isolate_hooks(agent)
        self._binding: AgentBinding = bind(agent, self._hooks)
        self._binding.unsafe_tools |= set(unsafe_tools)
        self._backend: Any = None
        self._codec: Any = None
        self._owner = worker_identity()
        # newest stored state record that outlives its run: (checkpoint_id, snapshot without timestamp)
        self._head: tuple[str, dict[str, Any]] | None = None
        #: states of records on their way to the store: each becomes the head once stored, so a later
        #: delta never refers to a record whose write failed
        self._unstored_heads: dict[str, dict[str, Any]] = {}
        self._bytes_since_full = 0
        self._chain_length = 0  # delta records since the last full snapshot
        self._running = False
        # CheckpointConfig.durability: "async" writes the call journal while the agent goes on,
        # "exit" keeps it in memory until the run ends (or fails); every record is kept (they are deltas)
        self._writes = DurableWriter(self.config.durability)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = self.config.open_backend()
        return self._backend

    @property
    def codec(self) -> Any:
        if self._codec is None:
            self._codec = self.config.make_codec()
        return self._codec

    def __getattr__(self, name: str) -> Any:
        agent = self.__dict__.get("agent")
        if agent is None:
            raise AttributeError(name)
        return getattr(agent, name)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- the guide's API ----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The agent's full state as a plain JSON-serializable dict (nothing is stored)."""
        return take_snapshot(self.agent, self.agent_id)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to a JSON file (atomically: a crash leaves the old file or the new one)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(self.checkpoint(), option=orjson.OPT_INDENT_2))
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SparkCkptError(f"cannot write agent checkpoint to {str(target)!r}: {exc}") from exc

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike[str], config: Any = None, **kwargs: Any) -> "CheckpointedAgent":
        """Build a fresh agent from a file written by ``save_checkpoint``."""
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"no agent checkpoint file at {str(path)!r}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptCheckpointError(f"agent checkpoint file {str(path)!r} is not valid JSON: {exc}") from None
        return cls.restore(data, config, **kwargs)

    @classmethod
    def restore(
        cls,
        checkpoint: dict[str, Any],
        config: Any = None,
        *,
        agent_class: type | None = None,
        checkpoint_config: CheckpointConfig | None = None,
        agent_id: str | None = None,
        **kwargs: Any,
    ) -> "CheckpointedAgent":
        """A fresh agent (built from a deep copy of ``config``, an ``AgentConfig``) holding ``checkpoint``'s
        state: same memory (the window is not re-applied), tool traces, strategy state and cost calls."""
        check_snapshot(checkpoint)
        if config is None:
            config = _config_from_snapshot(checkpoint)
        agent = (agent_class or Agent)(config=fresh_config(config))
        apply_snapshot(agent, checkpoint)
        return cls(
            agent,
            config=checkpoint_config,
            agent_id=agent_id or checkpoint.get("agent_id"),
            **kwargs,
        )

    def add_message_to_history(self, message: dict[str, Any] | str) -> None:
        """Add a message to the conversation (stored with the next run or ``await save_state()``)."""
        self.agent.add_message_to_history(message)

    async def save_state(self) -> str | None:
        """Store the current state now (e.g. after ``add_message_to_history``); returns the record id,
        or None when nothing changed since the last stored state."""
        execution_id = new_id("as")
        record = self._state_record(execution_id, 0, "saved", COMPLETED, advance_head=True)
        if record is None:
            return None
        await self._put(record, lease=None, wait=True)
        return record.checkpoint_id

    def list_checkpoints(self, limit: int | None = None) -> list[CheckpointHeader]:
        """This agent's stored records, newest first."""
        return self.backend.list(graph_id=self.agent_id, limit=limit)

    def prune(self, dry_run: bool = False) -> list[CheckpointHeader]:
        """Apply the configured retention rules, never deleting a record the newest state or an
        unfinished run still needs."""
        from ..retention import plan_prune

        rules = self.config.make_retention_rules()
        if not rules:
            return []
        needed = self._needed_ids()
        doomed = [h for h in plan_prune(self.backend, rules, self.agent_id, kinds=(AGENT,))
                  if h.checkpoint_id not in needed]
        if doomed and not dry_run:
            self.backend.delete([h.checkpoint_id for h in doomed])
        return doomed

    def restore_latest(self) -> bool:
        """Load the newest stored state of this agent (e.g. to continue a conversation in a new process).
        Returns False when nothing is stored."""
        for header in self.backend.list(graph_id=self.agent_id):
            record = self._load(header)
            if record.status == COMPLETED and record.event in ("run_finished", "saved"):
                state = self._resolve_state(record)
                if state is None:
                    continue
                apply_snapshot(self.agent, state)
                self._set_head(self._state_holder(record), state)
                return True
        return False

    # -- running --------------------------------------------------------------------------------
    async def run(self, inputs: Any = None) -> Any:
        """Run the agent once (Spark's ``agent.do(inputs)``), durably."""
        if self._running:
            raise SparkCkptError(f"agent {self.agent_id!r} is already running; runs of one agent are sequential")
        execution_id = new_id("ax")
        lease = await self._acquire(execution_id, wait=False)
        pre_run = self._comparable_snapshot()
        start = self._state_record(execution_id, 0, "run_started", RUNNING, advance_head=True, snapshot=pre_run)
        if start is None:
            start = self._bare_record(execution_id, 0, "run_started", RUNNING)
        start = _evolve(start, run_input=_input_data(inputs))
        await self._put(start, lease)
        return await self._execute(start, inputs, [], lease, pre_run, start_is_state=start.has_state)

    async def recover_and_continue(self, *, wait: bool = False, allow_unsafe_rerun: bool = False) -> Any:
        """Finish this agent's interrupted run: its journaled LLM responses and tool results are replayed
        (not paid again); the call in flight at the crash, and everything after it, runs live.

        Raises ``NothingToRecoverError`` if the newest run finished, ``UnsafeToRetryError`` if a tool
        marked not safe to re-run was in flight, ``LeaseError`` if another worker holds the run
        (``wait=True`` waits for it to finish or for its lease to expire). A run another worker
        finished (also while this one waited) is not run again: its stored state is loaded and its
        result returned. ``MissingCheckpointError`` if records the executions index says were written
        are gone (nothing is run).
        """
        newest = self.backend.executions(graph_id=self.agent_id, limit=1)
        if not newest or not newest[0].unfinished or newest[0].kind != AGENT:
            raise NothingToRecoverError(
                f"agent {self.agent_id!r} has no interrupted run in {self.config.backend_url()}: "
                "its newest run finished (or it never ran). Call run() to start a new one"
            )
        execution_id = newest[0].execution_id
        lease, head = await self._claim(execution_id, wait)
        if lease is None:
            return self._finished_result(head)
        try:
            return await self._recover(execution_id, head, lease, allow_unsafe_rerun)
        except BaseException:
            if not self._running:
                await self._release(lease)
            raise

    async def _claim(self, execution_id: str, wait: bool | float) -> tuple[Any, CheckpointHeader]:
        """The run's lease, or ``(None, head)`` once it completed (``leases.claim``)."""
        async def read_head() -> CheckpointHeader:
            head = await self.backend.aexecution_head(execution_id)
            if head is None:
                raise NothingToRecoverError(f"agent {self.agent_id!r} has no run {execution_id!r}")
            self.codec.index_tags.check(head)
            return head

        return await claim(self.backend, execution_id, self._owner, self.config.lease_ttl_s, wait, read_head)

    def _finished_result(self, head: CheckpointHeader) -> Any:
        """A run another worker finished: its stored state loaded, its result returned, nothing run."""
        try:
            record = self._load(head)
        except CheckpointNotFoundError:
            raise MissingCheckpointError(
                f"run {head.execution_id} of agent {self.agent_id!r} completed, but its final record "
                f"{head.checkpoint_id} is gone; it is not run again"
            ) from None
        state = self._resolve_state(record)
        if state is not None:
            apply_snapshot(self.agent, state)
            self._set_head(self._state_holder(record), state)
        return self.agent._state.get("last_result")

    async def _recover(self, execution_id: str, head: CheckpointHeader, lease: Any, allow_unsafe_rerun: bool) -> Any:
        headers = sorted(self.backend.list(execution_id=execution_id), key=lambda h: h.seq)
        if not headers or headers[-1].seq < head.seq:
            raise MissingCheckpointError(
                f"run {execution_id} of agent {self.agent_id!r}: the executions index says record seq "
                f"{head.seq} was written, but the newest stored is "
                f"{'seq ' + str(headers[-1].seq) if headers else 'none'}; continuing would pay for calls "
                "again, so nothing was run. Restore the missing records from a backup"
            )
        records = [self._load(h) for h in headers]
        start = next((r for r in records if r.event == "run_started"), None)
        if start is None:
            raise CorruptCheckpointError(
                f"run {execution_id} of agent {self.agent_id!r} has lost its run_started record (pruned or "
                "deleted by hand), so its input is unknown; start a new run"
            )
        calls: list[AgentCall] = [c for r in records if r.event == "call" for c in r.calls]
        stuck = unsafe_in_flight(calls)
        if stuck and not allow_unsafe_rerun:
            raise unsafe_error(stuck[0], f"agent {self.agent_id!r}")
        state = self._resolve_state(start)
        if state is not None:
            apply_snapshot(self.agent, state)
            self._set_head(self._state_holder(start), state)
        self._bytes_since_full = 0
        pre_run = self._comparable_snapshot()
        run_input = _input_from_data(start.run_input)
        return await self._execute(
            start, run_input, calls, lease, pre_run, start_is_state=start.has_state,
            next_seq=max(headers[-1].seq, head.seq) + 1, allow_unsafe_rerun=allow_unsafe_rerun,
        )

    async def _execute(
        self, start: AgentRecord, inputs: Any, replay: list[AgentCall], lease: Any, pre_run: dict[str, Any],
        *, start_is_state: bool, next_seq: int = 1, allow_unsafe_rerun: bool = False,
    ) -> Any:
        execution_id = start.execution_id
        seq = next_seq
        call_ids: list[str] = []

        async def persist(call: AgentCall, journal: list[AgentCall]) -> None:
            nonlocal seq, lease
            lease = await self._renew(lease)
            record = AgentRecord(
                checkpoint_id=new_id("ac"), agent_id=self.agent_id, execution_id=execution_id, seq=seq,
                timestamp=time.time(), event="call", status=RUNNING, calls=[call],
            )
            seq += 1
            await self._put(record, lease)
            call_ids.append(record.checkpoint_id)

        session = CallSession(
            agent_id=self.agent_id, execution_id=execution_id, graph_id=self.agent_id, node_key=None,
            hooks=self._hooks, persist=persist, replay=replay, allow_unsafe_rerun=allow_unsafe_rerun,
        )
        self.last_session = session
        self._binding.standalone = session
        self._running = True
        try:
            try:
                result = await self.agent.do(inputs)
            finally:
                self._binding.standalone = None
                self._running = False
                # Spark nests every previous context snapshot into the next one (each run gets slower
                # and deeper); nothing reads it, so drop it after each run.
                self.agent._state["context_snapshot"] = None
        except BaseException as exc:
            # A failed run leaves the agent as it was before it: recovery re-runs it from there.
            apply_snapshot(self.agent, _with_timestamp(pre_run))
            await self._finish_failed(execution_id, seq, lease, exc, session)
            raise
        if session.failure is not None:
            apply_snapshot(self.agent, _with_timestamp(pre_run))
            content = session.failure.content
            await self._finish_failed(execution_id, seq, lease, f"{content.get('error_type')}: {content.get('error')}", session)
            return result
        final = self._state_record(execution_id, seq, "run_finished", COMPLETED, advance_head=True)
        if final is None:
            final = self._bare_record(execution_id, seq, "run_finished", COMPLETED)
        try:
            await self._put(final, lease, wait=True)
        finally:  # (a failed final write leaves the run's journal as it is: recovery finds it "running")
            await self._release(lease)
        if not self.keep_call_journal:
            doomed = [h.checkpoint_id for h in self.backend.list(execution_id=execution_id)
                      if h.checkpoint_id != final.checkpoint_id
                      and not (h.seq == 0 and start_is_state)]
            if doomed:
                self.backend.delete(doomed)
        if self.config.make_retention_rules():
            self.prune()
        return result

    async def _finish_failed(self, execution_id: str, seq: int, lease: Any, error: Any, session: CallSession) -> None:
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        if isinstance(error, BaseException) and session.failure is None:
            from ..events import FailureEvent

            await self._hooks.on_failure(
                FailureEvent(
                    graph_id=self.agent_id, execution_id=execution_id, node_key=None, error=error,
                    error_type=type(error).__name__, message=str(error), node=self.agent, agent_id=self.agent_id,
                )
            )
        record = self._bare_record(execution_id, seq, "run_finished", FAILED)
        record = _evolve(record, error=message)
        try:
            await self._put(record, lease, wait=True)
        except SparkCkptError:
            # the run's journal is intact; recovery still finds it as "running"
            pass
        await self._release(lease)

    # -- records ----------------------------------------------------------------------------------
    def _comparable_snapshot(self) -> dict[str, Any]:
        snapshot = take_snapshot(self.agent, self.agent_id)
        snapshot.pop("timestamp", None)
        return snapshot

    def _state_record(
        self, execution_id: str, seq: int, event: str, status: str, *, advance_head: bool,
        snapshot: dict[str, Any] | None = None,
    ) -> AgentRecord | None:
        """A record holding the current state (full or as a delta), or None if unchanged."""
        snapshot = snapshot if snapshot is not None else self._comparable_snapshot()
        record_id = new_id("as")
        base = dict(checkpoint_id=record_id, agent_id=self.agent_id, execution_id=execution_id, seq=seq,
                    timestamp=time.time(), event=event, status=status)
        if self._head is None:
            record = AgentRecord(**base, state_full=snapshot)
            self._bytes_since_full = 0
            self._chain_length = 0
        else:
            head_id, head_state = self._head
            if head_state == snapshot:
                return None
            ops = agent_delta.diff(head_state, snapshot)
            delta_size = len(orjson.dumps(ops))
            full_size = len(orjson.dumps(snapshot))
            # keep chains shorter than the retention count, or retention could never delete anything
            keep = self.config.retention_count
            if (self._bytes_since_full + delta_size >= FULL_SNAPSHOT_RATIO * full_size
                    or (keep is not None and self._chain_length + 1 >= keep)):
                record = AgentRecord(**base, state_full=snapshot)
                self._bytes_since_full = 0
                self._chain_length = 0
            else:
                record = AgentRecord(**base, prev_state_id=head_id, state_delta=ops)
                self._bytes_since_full += delta_size
                self._chain_length += 1
        if advance_head:
            self._unstored_heads[record_id] = snapshot
        return record

    def _bare_record(self, execution_id: str, seq: int, event: str, status: str) -> AgentRecord:
        return AgentRecord(
            checkpoint_id=new_id("as"), agent_id=self.agent_id, execution_id=execution_id, seq=seq,
            timestamp=time.time(), event=event, status=status,
            prev_state_id=self._head[0] if self._head else None,
        )

    def _set_head(self, record_id: str, snapshot: dict[str, Any]) -> None:
        snapshot = dict(snapshot)
        snapshot.pop("timestamp", None)
        self._head = (record_id, snapshot)

    def _state_holder(self, record: AgentRecord) -> str:
        return record.checkpoint_id if record.has_state else (record.prev_state_id or record.checkpoint_id)

    def _resolve_state(self, record: AgentRecord) -> dict[str, Any] | None:
        """The agent state a record stands for, following delta links back to a full snapshot."""
        chain: list[AgentRecord] = []
        current: AgentRecord | None = record
        seen: set[str] = set()
        while current is not None and current.state_full is None:
            if current.checkpoint_id in seen:
                raise CorruptCheckpointError(f"agent state chain of {self.agent_id!r} loops at {current.checkpoint_id}")
            seen.add(current.checkpoint_id)
            if current.state_delta is not None:
                chain.append(current)
            if current.prev_state_id is None:
                if chain:
                    raise CorruptCheckpointError(
                        f"agent state delta {current.checkpoint_id} of {self.agent_id!r} has no base checkpoint"
                    )
                return None
            try:
                current = self._load_id(current.prev_state_id)
            except CheckpointNotFoundError:
                raise CorruptCheckpointError(
                    f"agent {self.agent_id!r}: state checkpoint {current.prev_state_id} that later ones are "
                    "deltas of was deleted (pruned outside CheckpointedAgent.prune?); the newest full state "
                    "cannot be rebuilt. Restore from a file saved with save_checkpoint, or start afresh"
                ) from None
        state = dict(current.state_full)  # type: ignore[union-attr, arg-type]
        for item in reversed(chain):
            state = agent_delta.apply(state, item.state_delta or [])
        return _with_timestamp(state, record.timestamp)

    def _needed_ids(self) -> set[str]:
        """Records recovery or the newest state still needs."""
        needed: set[str] = set()
        for latest in self.backend.executions(graph_id=self.agent_id, unfinished_only=True):
            needed.update(h.checkpoint_id for h in self.backend.list(execution_id=latest.execution_id))
        heads = []
        for header in self.backend.list(graph_id=self.agent_id):
            if header.status == COMPLETED:
                heads.append(header)
                break
        for h in self.backend.list(graph_id=self.agent_id):
            if h.checkpoint_id in needed and h.seq == 0:
                heads.append(h)
        for header in heads:
            record: AgentRecord | None = self._load(header)
            while record is not None:
                needed.add(record.checkpoint_id)
                if record.state_full is not None or record.prev_state_id is None:
                    break
                try:
                    record = self._load_id(record.prev_state_id)
                except CheckpointNotFoundError:
                    break
        return needed

    def _load(self, header: CheckpointHeader) -> AgentRecord:
        stored = self.backend.get(header.checkpoint_id)
        return self._decode(stored)

    def _load_id(self, checkpoint_id: str) -> AgentRecord:
        return self._decode(self.backend.get(checkpoint_id))

    def _decode(self, stored: Any) -> AgentRecord:
        h = stored.header
        if h.kind != AGENT:
            raise CorruptCheckpointError(f"checkpoint {h.checkpoint_id} is a {h.kind} checkpoint, not an agent's")
        data, _ = self.codec.decode_data(stored.blob, Identity(h.graph_id, h.execution_id, h.seq))
        if not isinstance(data, dict):
            raise CorruptCheckpointError(f"agent checkpoint {h.checkpoint_id} does not hold an agent record")
        # what the header already says is not repeated in the payload
        data.update(checkpoint_id=h.checkpoint_id, agent_id=h.graph_id, execution_id=h.execution_id,
                    seq=h.seq, timestamp=h.created_at, status=h.status)
        return from_data(data, AgentRecord)

    async def _put(self, record: AgentRecord, lease: Any, *, wait: bool = False) -> None:
        """Store ``record`` as ``config.durability`` says: "sync" before returning; "async" in a task
        the next write awaits; "exit" at the end of the run. ``wait``: now, after everything before it
        (the records that end a run, explicit saves)."""
        data = _compact(to_data(record))
        blob = self.codec.encode_data(data, Identity(self.agent_id, record.execution_id, record.seq))
        header = record.header(len(blob))
        if self.codec.index_tags.enabled:
            header = attrs.evolve(header, tag=self.codec.index_tags.tag(header))
        state = self._unstored_heads.pop(record.checkpoint_id, None)

        async def put() -> None:
            await self.backend.aput(header, blob, lease=lease)
            if state is not None:  # only now may later records build on it
                self._set_head(record.checkpoint_id, state)

        await self._writes.write(put, wait=wait)

    async def flush(self) -> None:
        """Write what the "async" and "exit" durability modes still hold, in order."""
        await self._writes.flush()

    # -- leases ---------------------------------------------------------------------------------
    async def _acquire(self, execution_id: str, *, wait: bool | float) -> Any:
        return await acquire_waiting(self.backend, execution_id, self._owner, self.config.lease_ttl_s, wait)

    async def _renew(self, lease: Any) -> Any:
        """Before each call's record: extend our own token (``LeaseError`` once the run was taken over,
        which stops this worker; never a new token)."""
        if lease is None or lease.expires_at - time.time() > self.config.lease_ttl_s / 2:
            return lease
        return await self.backend.arenew_lease(lease, self.config.lease_ttl_s)

    async def _release(self, lease: Any) -> None:
        if lease is not None:
            try:
                await self.backend.arelease_lease(lease)
            except SparkCkptError:
                pass


# -- helpers ------------------------------------------------------------------------------------------
_RECORD_DEFAULTS = {
    "status": RUNNING, "prev_state_id": None, "state_full": None, "state_delta": None, "run_input": None,
    "calls": [], "error": None,
}
_CALL_DEFAULTS = {
    "method": "", "response": None, "usage": None, "model_id": None, "messages_digest": None, "after_llm": -1,
    "tool_name": None, "tool_use_id": None, "tool_args": None, "tool_result": None, "tool_block": None,
    "tool_trace": None, "started_at": 0.0, "duration_s": 0.0,
}


_IN_HEADER = frozenset({"checkpoint_id", "agent_id", "execution_id", "seq", "timestamp", "status", "kind"})


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Drop fields at their default or already in the header: one record per call (or per turn) must
    stay small next to what it holds."""
    out = {k: v for k, v in data.items()
           if k not in _IN_HEADER and (k not in _RECORD_DEFAULTS or v != _RECORD_DEFAULTS[k])}
    if "calls" in out:
        out["calls"] = [{k: v for k, v in c.items() if k not in _CALL_DEFAULTS or v != _CALL_DEFAULTS[k]}
                        for c in out["calls"]]
    return out


def _evolve(record: AgentRecord, **changes: Any) -> AgentRecord:
    import attrs

    return attrs.evolve(record, **changes)


def _with_timestamp(snapshot: dict[str, Any], when: float | None = None) -> dict[str, Any]:
    out = dict(snapshot)
    out["timestamp"] = when if when is not None else time.time()
    return out


def _input_data(inputs: Any) -> Any:
    from spark.nodes.types import NodeMessage

    if isinstance(inputs, NodeMessage):
        return {"node_message": jsonable(inputs)}
    return {"value": jsonable(inputs)}


def _input_from_data(data: Any) -> Any:
    if isinstance(data, dict) and "node_message" in data:
        return node_message_from_data(data["node_message"])
    if isinstance(data, dict):
        return data.get("value")
    return data


def _config_from_snapshot(checkpoint: dict[str, Any]) -> Any:
    import logging

    from spark.agents import AgentConfig
    from spark.models.echo import EchoModel

    cfg = checkpoint.get("config") or {}
    logging.getLogger("spark_ckpt.agent").warning(
        "CheckpointedAgent.restore() without an AgentConfig: using EchoModel and no tools; pass the "
        "original AgentConfig to get the real model and tools back"
    )
    return AgentConfig(
        model=EchoModel(),
        name=cfg.get("name"),
        description=cfg.get("description"),
        system_prompt=cfg.get("system_prompt"),
        prompt_template=cfg.get("prompt_template"),
        output_mode=cfg.get("output_mode") or "text",
        max_steps=cfg.get("max_steps", 100),
        parallel_tool_execution=bool(cfg.get("parallel_tool_execution")),
    )


# -- inside a checkpointed graph ----------------------------------------------------------------------
class AgentNodeStateAdapter:
    """Lets the graph adapter journal an Agent node's calls and keep its full state in graph checkpoints."""

    def handles(self, node: Any) -> bool:
        return isinstance(node, Agent)

    def prepare(self, node: Any, graph: Any) -> None:
        if binding_of(node) is None:
            isolate_hooks(node)
        bind(node)

    def snapshot(self, node: Any) -> Any:
        return take_snapshot(node, None)

    def restore(self, node: Any, data: Any) -> None:
        if data:
            apply_snapshot(node, data)


register_node_state_adapter(AgentNodeStateAdapter())
