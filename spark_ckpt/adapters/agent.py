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

States form a chain of deltas (``engine.deltas``) with a full snapshot whenever the deltas written since
the last one outweigh it, so N turns store each message once. Used as a node of a checkpointed graph,
an agent gets the same journal through the graph's visit (``runtime.current_visit()``) and its full
snapshot lands in ``GraphCheckpoint.node_extras``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

from spark.agents import Agent

from ..backends.leases import claim, worker_identity
from ..config import CheckpointConfig, with_backend
from ..engine.damage import damaged
from ..errors import (
    CheckpointNotFoundError, ConfigError, CorruptCheckpointError, MissingCheckpointError,
    NothingToRecoverError, SparkCkptError,
)
from ..model import AGENT, COMPLETED, FAILED, RUNNING, AgentCall, AgentRecord, CheckpointHeader, new_id
from ..plugins import Hooks
from ..guide_views import agent_guide_view, agent_stored_form
from .agent_calls import (
    AgentBinding, CallSession, bind, not_safe_to_rerun, unsafe_error,
    unsafe_in_flight,
)
from .agent_records import (
    AgentRecords, evolve, input_data, input_from_data, with_timestamp,
)
from .agent_node import AgentNodeStateAdapter  # (importing it registers it for graphs)
from .agent_snapshot import read_snapshot_file, write_snapshot_file
from .agent_snapshot import (
    apply_snapshot, check_snapshot, fresh_config, isolate_hooks, take_snapshot,
)

__all__ = ["CheckpointedAgent", "AgentNodeStateAdapter", "not_safe_to_rerun"]



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
        backend: Any = None,
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
        self.config = with_backend(config, backend)  # (``backend``: an object, name or URL replacing config's)
        self.keep_call_journal = keep_call_journal
        self._hooks = hooks or Hooks()
        isolate_hooks(agent)
        self._binding: AgentBinding = bind(agent, self._hooks)
        self._binding.unsafe_tools |= set(unsafe_tools)
        self._backend: Any = None
        self._codec: Any = None
        self._owner = worker_identity()
        self._running = False
        #: the stored state chain and call records (``agent_records``)
        self._records = AgentRecords(self)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = self.config.open_backend()
            self._backend.bind_codec(self.codec)  # (its get_checkpoint() decodes as this agent does)
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
        """Close the backend opened from the config's name or URL; a backend object given to the config
        stays open (its creator closes it)."""
        if self._backend is not None:
            if self.config.owns_backend:
                self._backend.close()
            self._backend = None

    # -- the guide's API ----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The agent's full state as a plain dict in the guide's shape (``guide_views.agent_guide_view``:
        ``version`` "2.0", ISO ``timestamp``, ``memory.memory_policy`` "full", ...); nothing is stored."""
        return agent_guide_view(take_snapshot(self.agent, self.agent_id))

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to a JSON file (atomically: a crash leaves the old file or the new one)."""
        write_snapshot_file(path, self.checkpoint())

    @classmethod
    def load_checkpoint(
        cls, path: str | os.PathLike[str], agent_config: Any = None, checkpoint_config: Any = None, **kwargs: Any
    ) -> "CheckpointedAgent":
        """Build a fresh agent from a file written by ``save_checkpoint`` (arguments as ``restore``)."""
        return cls.restore(read_snapshot_file(path), agent_config, checkpoint_config, **kwargs)

    @classmethod
    def restore(
        cls,
        checkpoint: dict[str, Any],
        agent_config: Any = None,
        checkpoint_config: Any = None,
        *,
        agent_class: type | None = None,
        agent_id: str | None = None,
        config: Any = None,
        **kwargs: Any,
    ) -> "CheckpointedAgent":
        """A fresh agent (built from a deep copy of ``agent_config``) holding ``checkpoint``'s state: same
        memory (the window is not re-applied), tool traces, strategy state and cost calls.

        ``agent_config`` is the ``AgentConfig`` the agent was built with: its model and tools are code, not
        data, so no snapshot brings them back and none is made up. ``checkpoint_config`` is the
        ``CheckpointConfig`` the restored agent stores under (default: the defaults). Each is told by
        its type, so either order works (the guide's ``restore(snapshot, config)`` too); ``config=`` is
        the older name of the first. Without an ``AgentConfig``: ``ConfigError`` saying what to pass.
        """
        agent_config, checkpoint_config = _restore_configs(agent_config, checkpoint_config, config)
        checkpoint = check_snapshot(agent_stored_form(checkpoint))
        stored_id = checkpoint.get("agent_id")
        if stored_id is not None and not isinstance(stored_id, str):
            raise CorruptCheckpointError(
                f"agent checkpoint is damaged: its agent_id is a {type(stored_id).__name__}, not a string; "
                "pass agent_id= to restore() or use an earlier checkpoint"
            )
        agent = (agent_class or Agent)(config=fresh_config(agent_config))
        apply_snapshot(agent, checkpoint)
        return cls(
            agent,
            config=checkpoint_config,
            agent_id=agent_id or stored_id,
            **kwargs,
        )

    def add_message_to_history(self, message: dict[str, Any] | str) -> None:
        """Add a message to the conversation (stored with the next run or ``await save_state()``)."""
        self.agent.add_message_to_history(message)

    async def save_state(self) -> str | None:
        """Store the current state now (e.g. after ``add_message_to_history``); returns the record id,
        or None when nothing changed since the last stored state."""
        execution_id = new_id("as")
        record = self._records.state_record(execution_id, 0, "saved", COMPLETED, advance_head=True)
        if record is None:
            return None
        await self._records.put(record, lease=None, wait=True)
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
        needed = self._records.needed_ids()
        doomed = [h for h in plan_prune(self.backend, rules, self.agent_id, kinds=(AGENT,))
                  if h.checkpoint_id not in needed]
        if doomed and not dry_run:
            self.backend.delete([h.checkpoint_id for h in doomed])
        return doomed

    def restore_latest(self) -> bool:
        """Load the newest stored state of this agent (e.g. to continue a conversation in a new process).
        Returns False when nothing is stored."""
        for header in self.backend.list(graph_id=self.agent_id):
            record = self._records.load(header)
            if record.status == COMPLETED and record.event in ("run_finished", "saved"):
                state = self._records.resolve_state(record)
                if state is None:
                    continue
                apply_snapshot(self.agent, state, f"agent checkpoint {record.checkpoint_id}")
                self._records.set_head(self._records.state_holder(record), state)
                return True
        return False

    # -- running --------------------------------------------------------------------------------
    async def run(self, inputs: Any = None) -> Any:
        """Run the agent once (Spark's ``agent.do(inputs)``), durably."""
        if self._running:
            raise SparkCkptError(f"agent {self.agent_id!r} is already running; runs of one agent are sequential")
        execution_id = new_id("ax")
        lease = await self.backend.aacquire_lease(execution_id, self._owner, self.config.lease_ttl_s)
        pre_run = self._records.comparable_snapshot()
        start = self._records.state_record(execution_id, 0, "run_started", RUNNING, advance_head=True, snapshot=pre_run)
        if start is None:
            start = self._records.bare_record(execution_id, 0, "run_started", RUNNING)
        start = evolve(start, run_input=input_data(inputs))
        await self._records.put(start, lease)
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
                f"agent {self.agent_id!r} has no interrupted run in {self.backend.describe()}: "
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
            record = self._records.load(head)
        except CheckpointNotFoundError:
            raise MissingCheckpointError(
                f"run {head.execution_id} of agent {self.agent_id!r} completed, but its final record "
                f"{head.checkpoint_id} is gone; it is not run again"
            ) from None
        state = self._records.resolve_state(record)
        if state is not None:
            apply_snapshot(self.agent, state, f"agent checkpoint {record.checkpoint_id}")
            self._records.set_head(self._records.state_holder(record), state)
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
        records = [self._records.load(h) for h in headers]
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
        with damaged(f"agent checkpoint {start.checkpoint_id}"):  # (before the agent is changed)
            run_input = input_from_data(start.run_input)
        state = self._records.resolve_state(start)
        if state is not None:
            apply_snapshot(self.agent, state, f"agent checkpoint {start.checkpoint_id}")
            self._records.set_head(self._records.state_holder(start), state)
        self._records.bytes_since_full = 0
        pre_run = self._records.comparable_snapshot()
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
            await self._records.put(record, lease)
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
            apply_snapshot(self.agent, with_timestamp(pre_run))
            await self._finish_failed(execution_id, seq, lease, exc, session)
            raise
        if session.failure is not None:
            apply_snapshot(self.agent, with_timestamp(pre_run))
            content = session.failure.content
            await self._finish_failed(execution_id, seq, lease, f"{content.get('error_type')}: {content.get('error')}", session)
            return result
        final = self._records.state_record(execution_id, seq, "run_finished", COMPLETED, advance_head=True)
        if final is None:
            final = self._records.bare_record(execution_id, seq, "run_finished", COMPLETED)
        try:
            await self._records.put(final, lease, wait=True)
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
        record = self._records.bare_record(execution_id, seq, "run_finished", FAILED)
        record = evolve(record, error=message)
        try:
            await self._records.put(record, lease, wait=True)
        except SparkCkptError:
            # the run's journal is intact; recovery still finds it as "running"
            pass
        await self._release(lease)

    async def flush(self) -> None:
        """Write what the "async" and "exit" durability modes still hold, in order."""
        await self._records.flush()

    # -- leases ---------------------------------------------------------------------------------
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


def _restore_configs(*given: Any) -> tuple[Any, CheckpointConfig | None]:
    """``(agent config, checkpoint config)`` from what ``restore`` was given, told apart by type."""
    from spark.agents import AgentConfig

    agent_config = checkpoint_config = None
    for value in given:
        if value is None:
            continue
        if isinstance(value, CheckpointConfig):
            if checkpoint_config is not None:
                raise ConfigError("restore() was given two CheckpointConfigs; pass one, as checkpoint_config=")
            checkpoint_config = value
        elif isinstance(value, AgentConfig):
            if agent_config is not None:
                raise ConfigError("restore() was given two AgentConfigs; pass one, as agent_config=")
            agent_config = value
        else:
            raise ConfigError(
                f"restore() takes an AgentConfig and a CheckpointConfig, got a {type(value).__name__}; call "
                "restore(snapshot, agent_config=AgentConfig(...), checkpoint_config=CheckpointConfig(...))"
            )
    if agent_config is None:
        raise ConfigError(
            "CheckpointedAgent.restore() needs the AgentConfig the agent was built with: its model and tools "
            "are code, not data, so no snapshot can bring them back. Call restore(snapshot, "
            "agent_config=AgentConfig(model=..., tools=[...]), checkpoint_config=CheckpointConfig(...))"
        )
    return agent_config, checkpoint_config
