"""Seeing, journaling and replaying every LLM and tool call of a Spark agent.

``bind(agent)`` installs three instance-level wrappers (Spark's classes are never modified):

* ``agent.model`` becomes a ``CheckpointingModel`` (a ``spark.models.base.Model``) around the real model:
  every ``get_text``/``get_json`` fires the agent-call hooks, feeds the agent's ``CostTracker`` and is
  journaled before the agent sees the response;
* ``agent._execute_single_tool`` is wrapped the same way for tool calls (the narrowest point that sees a
  tool call together with its result and can still await a durable write);
* ``agent.process`` is wrapped to turn Spark's swallowed failures back into events: the error dict an
  agent returns fires ``spark_ckpt_on_failure``, and an error we must not hide (a plugin's
  ``RunStopped``, an unsafe tool in flight at a crash, a failed journal write) is re-raised.

Where the journal goes is decided per call by the active ``CallSession``: the standalone
``CheckpointedAgent`` run, or the graph visit the agent runs in (``current_visit()``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from spark.models.base import Model

from ..errors import GraphMismatchError, RunStopped, UnsafeToRetryError
from ..events import AgentCallEvent, FailureEvent
from ..model import LLM_CALL, TOOL_CALL, TOOL_STARTED, AgentCall
from .agent_snapshot import jsonable
from .runtime import current_visit

log = logging.getLogger("spark_ckpt.agent")

UNSAFE_ATTR = "_spark_ckpt_not_safe_to_rerun"
_BINDING_ATTR = "_spark_ckpt_binding"
_CHARS_PER_TOKEN = 4  # rough estimate when a model reports no usage


def not_safe_to_rerun(tool: Any) -> Any:
    """Mark a tool (``@tool`` object or plain function) as not safe to run twice.

    If such a tool was running when the process died, recovery raises ``UnsafeToRetryError`` naming it
    instead of calling it again. Usable as a decorator above ``@tool``.
    """
    setattr(tool, UNSAFE_ATTR, True)
    return tool


def _tool_is_unsafe(agent: Any, name: str | None, extra: set[str]) -> bool:
    if name is None:
        return False
    if name in extra:
        return True
    tool = agent.tool_registry.registry.get(name)
    return bool(getattr(tool, UNSAFE_ATTR, False) or getattr(getattr(tool, "_tool_func", None), UNSAFE_ATTR, False))


def messages_digest(messages: Any, system_prompt: Any) -> str:
    data = orjson.dumps([jsonable(system_prompt), jsonable(list(messages))], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def extract_usage(response: Any, messages: Any, system_prompt: Any) -> dict[str, Any]:
    """Token usage from a model response (OpenAI, Anthropic and Bedrock spellings), else an estimate."""
    usage = None
    if isinstance(response, dict):
        usage = response.get("usage") or (response.get("metadata") or {}).get("usage")
    if isinstance(usage, dict):
        tokens_in = _first_int(usage, "input_tokens", "prompt_tokens", "inputTokens")
        tokens_out = _first_int(usage, "output_tokens", "completion_tokens", "outputTokens")
        if tokens_in is not None or tokens_out is not None:
            return {"input_tokens": tokens_in or 0, "output_tokens": tokens_out or 0, "estimated": False}
    sent = len(orjson.dumps(jsonable([system_prompt, list(messages)])))
    got = len(orjson.dumps(jsonable(response.get("content") if isinstance(response, dict) else response)))
    return {
        "input_tokens": sent // _CHARS_PER_TOKEN,
        "output_tokens": got // _CHARS_PER_TOKEN,
        "estimated": True,
    }


def _first_int(d: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = d.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def is_error_result(result: Any) -> bool:
    """Spark's ``Agent.process`` turns every exception into a NodeMessage holding this dict."""
    content = getattr(result, "content", None)
    return isinstance(content, dict) and {"error", "error_type", "category"} <= content.keys()


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


def unsafe_error(call: AgentCall, where: str) -> UnsafeToRetryError:
    return UnsafeToRetryError(
        f"tool {call.tool_name!r} (call id {call.tool_use_id!r}, arguments {call.tool_args!r}) of {where} "
        "was running when the process stopped and is marked not safe to re-run: it may or may not have "
        "taken effect. Check its side effect, then recover with allow_unsafe_rerun=True to run it again"
    )


class AgentBinding:
    """Everything spark-ckpt attached to one agent instance."""

    def __init__(self, agent: Any, hooks: Any) -> None:
        self.agent = agent
        self.hooks = hooks
        self.standalone: CallSession | None = None
        self.unsafe_tools: set[str] = set()
        self.original_tool_executor = agent._execute_single_tool
        self.original_process = agent.process

    def session(self) -> CallSession | None:
        visit = current_visit()
        if visit is not None and self.standalone is None:
            return _visit_session(visit, self)
        return self.standalone

    @property
    def key(self) -> str:
        return self.agent.name or type(self.agent).__name__

    # -- LLM calls ------------------------------------------------------------------------------
    async def model_call(
        self, inner: Model, method: str, call: Callable[[], Awaitable[Any]], messages: Any, system_prompt: Any
    ) -> Any:
        session = self.session()
        model_id = _model_id(inner)
        if session is None:
            return await self._observed_llm_call(inner, method, call, messages, system_prompt, model_id)
        session.raise_fatal()
        digest = messages_digest(messages, system_prompt)
        index = session.llm_count
        session.llm_count += 1
        replay = session.llm_replay[index] if index < len(session.llm_replay) else None
        event_index = session.next_event_index()
        if replay is not None:
            if replay.messages_digest is not None and replay.messages_digest != digest:
                raise session.set_fatal(
                    GraphMismatchError(
                        f"agent {session.agent_id!r} sent different messages to the model in LLM call #{index} "
                        "than before the crash, so the journaled response cannot be replayed: the agent's "
                        "code, config, tools or inputs changed since. Recover with the original agent, or "
                        "start a new run"
                    )
                )
            session.replayed += 1
            response = replay.response
            await self._fire_llm(session, "pre", event_index, method, messages, None, None, model_id, True)
            self._record_cost(replay.model_id or model_id, replay.usage, replay.started_at)
            await self._fire_llm(session, "post", event_index, method, messages, response, replay.usage, model_id, True)
            return response
        await self._fire_llm(session, "pre", event_index, method, messages, None, None, model_id, False)
        started = time.time()
        response = jsonable(await call())
        session.live_llm_calls += 1
        usage = extract_usage(response, messages, system_prompt)
        entry = AgentCall(
            kind=LLM_CALL, index=index, method=method, response=response, usage=usage, model_id=model_id,
            messages_digest=digest, started_at=started, duration_s=time.time() - started,
        )
        await session.record(entry)
        self._record_cost(model_id, usage, started)
        await self._fire_llm(session, "post", event_index, method, messages, response, usage, model_id, False)
        return response

    async def _observed_llm_call(self, inner, method, call, messages, system_prompt, model_id) -> Any:
        """Outside any checkpointed run: hooks and cost tracking only."""
        agent_id = self.key
        pre = AgentCallEvent(agent_id=agent_id, execution_id="", call_index=0, method=method,
                             messages=list(messages), model_id=model_id)
        await self.hooks.pre_agent_call(pre)
        started = time.time()
        response = await call()
        usage = extract_usage(response, messages, system_prompt)
        self._record_cost(model_id, usage, started)
        post = AgentCallEvent(agent_id=agent_id, execution_id="", call_index=0, method=method,
                              messages=list(messages), response=response, usage=usage, model_id=model_id,
                              tool_calls=_tool_calls(response))
        await self.hooks.post_agent_call(post)
        return response

    async def _fire_llm(self, session, phase, index, method, messages, response, usage, model_id, replayed) -> None:
        event = AgentCallEvent(
            agent_id=session.agent_id, execution_id=session.execution_id, call_index=index, method=method,
            messages=list(messages), response=response, tool_calls=_tool_calls(response),
            usage=usage, model_id=model_id, replayed=replayed,
        )
        try:
            if phase == "pre":
                await self.hooks.pre_agent_call(event)
            else:
                await self.hooks.post_agent_call(event)
        except RunStopped as exc:
            raise session.set_fatal(exc)

    def _record_cost(self, model_id: str | None, usage: dict[str, Any] | None, when: float) -> None:
        if not usage:
            return
        self.agent.cost_tracker.record_call(
            model_id=model_id or "unknown",
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            timestamp=when or None,
        )

    # -- tool calls -----------------------------------------------------------------------------
    async def tool_call(self, tool_call: dict[str, Any], context: Any) -> tuple[Any, Any]:
        session = self.session()
        name, use_id, args = _tool_call_parts(tool_call)
        if session is None:
            event = AgentCallEvent(agent_id=self.key, execution_id="", call_index=0, method="tool",
                                   tool_name=name, tool_args=args)
            await self.hooks.pre_agent_call(event)
            result, block = await self.original_tool_executor(tool_call, context)
            await self.hooks.post_agent_call(attrs_evolve(event, response=jsonable(block)))
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
            await self.hooks.pre_agent_call(attrs_evolve(event, replayed=replay is not None))
        except RunStopped as exc:
            raise session.set_fatal(exc)
        if replay is not None:
            session.replayed += 1
            if replay.tool_trace is not None:
                self.agent._state["tool_traces"].append(dict(replay.tool_trace))
            result, block = replay.tool_result, replay.tool_block
        else:
            unsafe = _tool_is_unsafe(self.agent, name, session.unsafe_tools | self.unsafe_tools)
            started_before = session.tools_started.get(key)
            if unsafe and started_before is not None and not session.allow_unsafe_rerun:
                raise session.set_fatal(unsafe_error(started_before, f"agent {session.agent_id!r}"))
            base = dict(after_llm=after_llm, index=len(session.journal), method="tool", tool_name=name,
                        tool_use_id=use_id, tool_args=jsonable(args))
            if unsafe:
                await session.record(AgentCall(kind=TOOL_STARTED, started_at=time.time(), **base))
            started = time.time()
            result, block = await self.original_tool_executor(tool_call, context)
            if block is None:  # unknown tool: nothing ran
                return result, block
            session.live_tool_calls += 1
            trace = _find_trace(self.agent._state["tool_traces"], use_id, name)
            entry = AgentCall(
                kind=TOOL_CALL, tool_result=jsonable(result), tool_block=jsonable(block),
                tool_trace=jsonable(trace), started_at=started, duration_s=time.time() - started, **base,
            )
            await session.record(entry)
            if trace is not None:  # keep the live trace JSON-able, exactly as a replay restores it
                trace["output"] = entry.tool_result
            result, block = entry.tool_result, entry.tool_block
        try:
            await self.hooks.post_agent_call(
                attrs_evolve(event, response=block, replayed=replay is not None)
            )
        except RunStopped as exc:
            raise session.set_fatal(exc)
        return result, block

    # -- process ----------------------------------------------------------------------------------
    async def process(self, context: Any = None) -> Any:
        session = self.session()
        result = await self.original_process(context)
        if session is not None and session.fatal is not None:
            raise session.fatal
        if is_error_result(result):
            content = result.content
            if session is not None:
                session.failure = result
            raw = getattr(result, "raw", None)
            visit = current_visit()
            await self.hooks.on_failure(
                FailureEvent(
                    graph_id=session.graph_id if session else (visit.graph_id if visit else ""),
                    execution_id=session.execution_id if session else "",
                    node_key=session.node_key if session else None,
                    error=raw if isinstance(raw, BaseException) else None,
                    error_type=str(content.get("error_type")),
                    message=str(content.get("error")),
                    node=self.agent,
                    input=getattr(context, "inputs", None),
                    agent_id=session.agent_id if session else self.key,
                )
            )
        return result


def attrs_evolve(event: AgentCallEvent, **changes: Any) -> AgentCallEvent:
    import attrs

    return attrs.evolve(event, **changes)


def _tool_calls(response: Any) -> Any:
    return response.get("tool_calls") if isinstance(response, dict) else None


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


def _model_id(model: Any) -> str | None:
    try:
        cfg = model.get_config()
    except Exception:
        return None
    value = cfg.get("model_id") if isinstance(cfg, dict) else getattr(cfg, "model_id", None)
    return str(value) if value is not None else None


class CheckpointingModel(Model):
    """A ``Model`` around the agent's real model that sees, journals and replays every call."""

    def __init__(self, inner: Model, binding: AgentBinding) -> None:
        super().__init__()
        self.inner_model = inner
        self._binding = binding

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the proxy itself lacks: behave like the wrapped model
        inner = self.__dict__.get("inner_model")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def update_config(self, **model_config: Any) -> None:
        self.inner_model.update_config(**model_config)

    def get_config(self) -> Any:
        return self.inner_model.get_config()

    def to_spec_dict(self) -> dict[str, Any]:
        return self.inner_model.to_spec_dict()

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        return await self._binding.model_call(
            self.inner_model,
            "get_text",
            lambda: self.inner_model.get_text(
                messages, system_prompt=system_prompt, tool_specs=tool_specs, tool_choice=tool_choice, **kwargs
            ),
            messages,
            system_prompt,
        )

    async def get_json(self, output_model, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        return await self._binding.model_call(
            self.inner_model,
            "get_json",
            lambda: self.inner_model.get_json(
                output_model, messages, system_prompt=system_prompt, tool_specs=tool_specs,
                tool_choice=tool_choice, **kwargs,
            ),
            messages,
            system_prompt,
        )


def bind(agent: Any, hooks: Any = None) -> AgentBinding:
    """Install the model proxy and the tool/process wrappers on ``agent`` (once)."""
    existing = agent.__dict__.get(_BINDING_ATTR)
    if existing is not None:
        return existing
    if hooks is None:
        from ..plugins import Hooks

        hooks = Hooks()
    binding = AgentBinding(agent, hooks)
    agent.model = CheckpointingModel(agent.model, binding)
    agent._execute_single_tool = binding.tool_call
    agent.process = binding.process
    setattr(agent, _BINDING_ATTR, binding)
    return binding


def binding_of(agent: Any) -> AgentBinding | None:
    return agent.__dict__.get(_BINDING_ATTR)


# -- inside a graph visit ---------------------------------------------------------------------------
_VISIT_KEY = "spark_ckpt.agent_calls"


def _visit_session(visit: Any, binding: AgentBinding) -> CallSession:
    sessions: dict[str, CallSession] = visit.extras.setdefault(_VISIT_KEY, {})
    key = binding.key
    session = sessions.get(key)
    if session is not None:
        return session
    recovered = visit.recovered_inflight if isinstance(visit.recovered_inflight, dict) else {}
    replay_data = (recovered.get("agents") or {}).get(key) or []
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
        node_key=visit.node_key, hooks=binding.hooks, persist=persist, replay=replay,
        allow_unsafe_rerun=_tool_rerun_allowed(visit),
    )
    sessions[key] = session
    if replay:
        stuck = [c for c in unsafe_in_flight(replay) if c.kind == TOOL_STARTED]
        if stuck and not _tool_rerun_allowed(visit):
            session.fatal = unsafe_error(stuck[0], f"node {visit.node_key!r}")
    return session


def _tool_rerun_allowed(visit: Any) -> bool:
    return bool(getattr(visit.config, "allow_unsafe_rerun", False) or visit.extras.get("allow_unsafe_rerun"))


__all__ = [
    "AgentBinding", "CallSession", "CheckpointingModel", "bind", "binding_of", "not_safe_to_rerun",
    "unsafe_in_flight",
]
