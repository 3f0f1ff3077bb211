"""Seeing, journaling and replaying every LLM and tool call of a Spark agent: the binding.

``bind(agent)`` installs three instance-level wrappers (Spark's classes are never modified):

* ``agent.model`` becomes a ``CheckpointingModel`` (a ``spark.models.base.Model``) around the real model:
  every ``get_text``/``get_json`` fires the agent-call hooks, feeds the agent's ``CostTracker`` and is
  journaled before the agent sees the response (``agent_model_calls``);
* ``agent._execute_single_tool`` is wrapped the same way for tool calls (the narrowest point that sees a
  tool call together with its result and can still await a durable write) (``agent_tool_calls``);
* ``agent.process`` is wrapped to turn Spark's swallowed failures back into events: the error dict an
  agent returns fires ``spark_ckpt_on_failure``, and an error we must not hide (a plugin's
  ``RunStopped``, an unsafe tool in flight at a crash, a failed journal write) is re-raised.

Where the journal goes is decided per call by the active ``CallSession`` (``agent_call_journal``): the
standalone ``CheckpointedAgent`` run, or the graph visit the agent runs in (``current_visit()``).
Tools marked not safe to re-run are in ``agent_unsafe_tools``.

Invariants: an agent is bound at most once (``bind`` again returns the same binding); a standalone
run's session takes precedence over the graph visit the agent happens to run in. This module also
re-exports the names of the modules above, which used to live here.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from spark.models.base import Model

from ..events import FailureEvent
from .agent_call_journal import CallSession, visit_session
from .agent_model_calls import CheckpointingModel, model_call
from .agent_tool_calls import run_tool_call
from .runtime import current_visit

# Defined here before the split into the modules above; still importable from here.
from .agent_call_journal import VISIT_KEY as _VISIT_KEY  # noqa: F401
from .agent_call_journal import _tool_key, unsafe_in_flight  # noqa: F401
from .agent_call_journal import tool_rerun_allowed as _tool_rerun_allowed  # noqa: F401
from .agent_model_calls import _CHARS_PER_TOKEN, _first_int, extract_usage, messages_digest  # noqa: F401
from .agent_model_calls import model_id_of as _model_id  # noqa: F401
from .agent_model_calls import tool_calls_of as _tool_calls  # noqa: F401
from .agent_tool_calls import _find_trace, _tool_call_parts, attrs_evolve  # noqa: F401
from .agent_unsafe_tools import UNSAFE_ATTR, not_safe_to_rerun, unsafe_error  # noqa: F401
from .agent_unsafe_tools import tool_is_unsafe as _tool_is_unsafe  # noqa: F401

log = logging.getLogger("spark_ckpt.agent")

_BINDING_ATTR = "_spark_ckpt_binding"


def is_error_result(result: Any) -> bool:
    """Spark's ``Agent.process`` turns every exception into a NodeMessage holding this dict."""
    content = getattr(result, "content", None)
    return isinstance(content, dict) and {"error", "error_type", "category"} <= content.keys()


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
            return visit_session(visit, self.key, self.hooks)
        return self.standalone

    @property
    def key(self) -> str:
        return self.agent.name or type(self.agent).__name__

    async def model_call(
        self, inner: Model, method: str, call: Callable[[], Awaitable[Any]], messages: Any, system_prompt: Any
    ) -> Any:
        return await model_call(self, inner, method, call, messages, system_prompt)

    async def tool_call(self, tool_call: dict[str, Any], context: Any) -> tuple[Any, Any]:
        return await run_tool_call(self, tool_call, context)

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


__all__ = [
    "AgentBinding", "CallSession", "CheckpointingModel", "bind", "binding_of", "not_safe_to_rerun",
    "unsafe_in_flight",
]
