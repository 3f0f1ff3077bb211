"""Tool calls of a bound agent: seen by the hooks, journaled, replayed on recovery, guarded if unsafe.

``bind`` replaces ``agent._execute_single_tool`` (the narrowest point that sees a tool call together
with its result and can still await a durable write) with the binding's ``tool_call``, that is
``run_tool_call``, which:

* outside any checkpointed run, only fires the agent-call hooks around the real tool;
* in a run whose journal holds this call (same LLM calls before it, tool call id and name), returns
  the journaled result without running the tool, and restores its trace in the agent's state;
* otherwise runs the tool and journals its result, block and trace before the agent sees them; a
  tool marked not safe to re-run is journaled as started first, and if it had started before the
  crash without completing, recovery refuses to run it again (``UnsafeToRetryError``) unless allowed.

Invariants: a result is journaled as an exact copy (or, if it cannot be stored, its JSON description),
and the live run gets that copy (its trace's output too), so a live run and its replay leave the same state; an unknown tool (no block) ran
nothing, and its result is not journaled; an error that escapes a hook (``RunStopped``, a fault
injector's) makes the session fatal.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..events import AgentCallEvent
from ..model import TOOL_CALL, TOOL_STARTED, AgentCall
from .agent_snapshot import jsonable, kept_exactly
from .agent_unsafe_tools import tool_is_unsafe, unsafe_error

if TYPE_CHECKING:
    from .agent_calls import AgentBinding


async def run_tool_call(binding: AgentBinding, tool_call: dict[str, Any], context: Any) -> tuple[Any, Any]:
    session = binding.session()
    name, use_id, args = _tool_call_parts(tool_call)
    if session is None:
        event = AgentCallEvent(agent_id=binding.key, execution_id="", call_index=0, method="tool",
                               tool_name=name, tool_args=args)
        await binding.hooks.pre_agent_call(event)
        result, block = await binding.original_tool_executor(tool_call, context)
        await binding.hooks.post_agent_call(attrs_evolve(event, response=jsonable(block)))
        return result, block
    session.raise_fatal()
    after_llm = session.llm_count - 1
    key = (after_llm, use_id, name)
    event = AgentCallEvent(
        agent_id=session.agent_id, execution_id=session.execution_id, call_index=session.next_event_index(),
        method="tool", tool_name=name, tool_args=args,
    )
    replay = session.tool_replay.get(key)
    try:
        await binding.hooks.pre_agent_call(attrs_evolve(event, replayed=replay is not None))
    except Exception as exc:  # only RunStopped and a fault injector's errors escape the hooks
        raise session.set_fatal(exc)
    if replay is not None:
        session.replayed += 1
        if replay.tool_trace is not None:
            binding.agent._state["tool_traces"].append(dict(replay.tool_trace))
        result, block = replay.tool_result, replay.tool_block
    else:
        unsafe = tool_is_unsafe(binding.agent, name, session.unsafe_tools | binding.unsafe_tools)
        started_before = session.tools_started.get(key)
        if unsafe and started_before is not None and not session.allow_unsafe_rerun:
            raise session.set_fatal(unsafe_error(started_before, f"agent {session.agent_id!r}"))
        base = dict(after_llm=after_llm, index=len(session.journal), method="tool", tool_name=name,
                    tool_use_id=use_id, tool_args=jsonable(args))
        if unsafe:
            await session.record(AgentCall(kind=TOOL_STARTED, started_at=time.time(), **base))
        started = time.time()
        result, block = await binding.original_tool_executor(tool_call, context)
        if block is None:  # unknown tool: nothing ran
            return result, block
        session.live_tool_calls += 1
        trace = _find_trace(binding.agent._state["tool_traces"], use_id, name)
        kept = kept_exactly(result, what="tool result")
        if trace is not None:  # the live trace holds the result as journaled, exactly as a replay restores it
            trace["output"] = kept
        entry = AgentCall(
            kind=TOOL_CALL, tool_result=kept, tool_block=jsonable(block),
            tool_trace=kept_exactly(trace, what="tool trace"), started_at=started,
            duration_s=time.time() - started, **base,
        )
        await session.record(entry)
        result, block = entry.tool_result, entry.tool_block
    try:
        await binding.hooks.post_agent_call(
            attrs_evolve(event, response=block, replayed=replay is not None)
        )
    except Exception as exc:  # only RunStopped and a fault injector's errors escape the hooks
        raise session.set_fatal(exc)
    return result, block


def attrs_evolve(event: AgentCallEvent, **changes: Any) -> AgentCallEvent:
    import attrs

    return attrs.evolve(event, **changes)


def _tool_call_parts(tool_call: dict[str, Any]) -> tuple[str | None, str | None, Any]:
    func = tool_call.get("function") or {}
    name = func.get("name")
    use_id = tool_call.get("id") or name
    args = func.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            pass
    return name, use_id, args


def _find_trace(traces: list[Any], use_id: str | None, name: str | None) -> Any:
    for trace in reversed(traces):
        if trace.get("tool_use_id") == use_id and trace.get("tool_name") == name:
            return trace
    return None
