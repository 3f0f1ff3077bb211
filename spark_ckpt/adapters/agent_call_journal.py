"""The call journal of one agent run, and how a recovered run matches its calls to it for replay.

A ``CallSession`` is the journal of one agent run: a standalone ``CheckpointedAgent`` run, or the
graph visit an agent runs in (``visit_session``). It holds the calls journaled before a crash
(what to replay) and records each new call as it completes.

Invariants:

* a call is journaled (``persist`` awaited) before the agent sees its result; a failed write makes
  the session fatal, because acting on a result we could not journal would make it a paid-twice
  call after a crash;
* LLM calls are replayed by their position in the run (the n-th LLM call gets the n-th journaled
  response, if the messages sent hash as they did: ``agent_model_calls``); tool calls by ``(LLM calls before it, tool call id, tool name)``, so a tool replays
  only after the same model response asked for it;
* a ``TOOL_STARTED`` entry without a ``TOOL_CALL`` for the same key is a tool that was running when
  the process stopped (``unsafe_in_flight``);
* once fatal, a session stays fatal: the first error is the one re-raised.

Inside a graph visit the journals of all agents of the visit are stored together as the visit's
in-flight record (``{"agents": {agent key: [calls]}}``). No Spark import.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from ..model import LLM_CALL, TOOL_CALL, TOOL_STARTED, AgentCall
from .agent_unsafe_tools import unsafe_error


class CallSession:
    """The journal of one agent run (standalone run or graph visit): what to replay, what was done."""

    def __init__(
        self,
        *,
        agent_id: str,
        execution_id: str,
        graph_id: str,
        node_key: str | None,
        hooks: Any,
        persist: Callable[[AgentCall, list[AgentCall]], Awaitable[None]] | None,
        replay: list[AgentCall] = (),  # type: ignore[assignment]
        unsafe_tools: set[str] = frozenset(),  # type: ignore[assignment]
        allow_unsafe_rerun: bool = False,
    ) -> None:
        self.agent_id = agent_id
        self.execution_id = execution_id
        self.graph_id = graph_id
        self.node_key = node_key
        self.hooks = hooks
        self.persist = persist
        self.unsafe_tools = set(unsafe_tools)
        self.allow_unsafe_rerun = allow_unsafe_rerun
        self.journal: list[AgentCall] = list(replay)
        self.llm_replay = [c for c in replay if c.kind == LLM_CALL]
        self.tool_replay = {_tool_key(c): c for c in replay if c.kind == TOOL_CALL}
        self.tools_started = {_tool_key(c): c for c in replay if c.kind == TOOL_STARTED}
        self.llm_count = 0  # LLM calls made (or replayed) so far in this run
        self.events = 0
        self.fatal: BaseException | None = None
        self.failure: Any = None  # Spark's error NodeMessage, when the run failed quietly
        self.replayed = 0
        self.live_llm_calls = 0
        self.live_tool_calls = 0

    def raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def set_fatal(self, exc: BaseException) -> BaseException:
        if self.fatal is None:
            self.fatal = exc
        return exc

    async def record(self, call: AgentCall) -> None:
        self.journal.append(call)
        if self.persist is None:
            return
        try:
            await self.persist(call, self.journal)
        except BaseException as exc:
            # Acting on a result we could not journal would make it a paid-twice call after a crash.
            raise self.set_fatal(exc)

    def next_event_index(self) -> int:
        self.events += 1
        return self.events - 1


def _tool_key(call: AgentCall) -> tuple[int, str | None, str | None]:
    return (call.after_llm, call.tool_use_id, call.tool_name)


def unsafe_in_flight(calls: list[AgentCall]) -> list[AgentCall]:
    """Tools marked not safe to re-run that started but never completed."""
    done = {_tool_key(c) for c in calls if c.kind == TOOL_CALL}
    return [c for c in calls if c.kind == TOOL_STARTED and _tool_key(c) not in done]


# -- inside a graph visit ---------------------------------------------------------------------------
VISIT_KEY = "spark_ckpt.agent_calls"


def visit_session(visit: Any, agent_key: str, hooks: Any) -> CallSession:
    """The session of agent ``agent_key`` in the graph visit ``visit`` (one per agent and visit)."""
    sessions: dict[str, CallSession] = visit.extras.setdefault(VISIT_KEY, {})
    session = sessions.get(agent_key)
    if session is not None:
        return session
    recovered = visit.recovered_inflight if isinstance(visit.recovered_inflight, dict) else {}
    replay_data = (recovered.get("agents") or {}).get(agent_key) or []
    from ..codec import from_data

    replay = [from_data(c, AgentCall) for c in replay_data]

    async def persist(call: AgentCall, journal: list[AgentCall]) -> None:
        if visit.persist_inflight is None:
            return
        from ..codec import to_data

        payload = {"agents": {k: [to_data(c) for c in s.journal] for k, s in sessions.items()}}
        await visit.persist_inflight(payload)

    session = CallSession(
        agent_id=visit.node_key, execution_id=visit.execution_id, graph_id=visit.graph_id,
        node_key=visit.node_key, hooks=hooks, persist=persist, replay=replay,
        allow_unsafe_rerun=tool_rerun_allowed(visit),
    )
    sessions[agent_key] = session
    if replay:
        stuck = [c for c in unsafe_in_flight(replay) if c.kind == TOOL_STARTED]
        if stuck and not tool_rerun_allowed(visit):
            session.fatal = unsafe_error(stuck[0], f"node {visit.node_key!r}")
    return session


def tool_rerun_allowed(visit: Any) -> bool:
    return bool(getattr(visit.config, "allow_unsafe_rerun", False) or visit.extras.get("allow_unsafe_rerun"))
