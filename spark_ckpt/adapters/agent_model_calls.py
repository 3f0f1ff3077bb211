"""The model proxy: every LLM call of a bound agent seen by the hooks, journaled, and replayed on recovery.

``CheckpointingModel`` is a ``spark.models.base.Model`` around the agent's real model (the agent
class is never modified); its ``get_text``/``get_json`` go through ``model_call``, which:

* outside any checkpointed run, only fires the agent-call hooks and feeds the agent's ``CostTracker``;
* in a run whose journal holds this call (the n-th LLM call of the run), returns the journaled
  response without calling the model, after checking the messages sent hash as they did (a
  ``GraphMismatchError`` otherwise: the agent's code, config, tools or inputs changed);
* otherwise calls the model, journals the response with its token usage and model id, and only then
  lets the agent see it.

Invariants: hooks see every call, live or replayed (``replayed=True``), pre before post; the cost
tracker is fed once per call, from the journaled usage on replay; a response is made JSON-able
before it is journaled, so a live run and its replay see the same value. Token usage comes from the
response when the model reports it, else is estimated from the text sizes.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from spark.models.base import Model

from ..errors import GraphMismatchError
from ..events import AgentCallEvent
from ..model import LLM_CALL, AgentCall
from .agent_snapshot import jsonable

if TYPE_CHECKING:
    from .agent_call_journal import CallSession
    from .agent_calls import AgentBinding

_CHARS_PER_TOKEN = 4  # rough estimate when a model reports no usage


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


def tool_calls_of(response: Any) -> Any:
    return response.get("tool_calls") if isinstance(response, dict) else None


def model_id_of(model: Any) -> str | None:
    try:
        cfg = model.get_config()
    except Exception:
        return None
    value = cfg.get("model_id") if isinstance(cfg, dict) else getattr(cfg, "model_id", None)
    return str(value) if value is not None else None


# -- one LLM call ------------------------------------------------------------------------------------
async def model_call(
    binding: AgentBinding, inner: Model, method: str, call: Callable[[], Awaitable[Any]], messages: Any,
    system_prompt: Any,
) -> Any:
    session = binding.session()
    model_id = model_id_of(inner)
    if session is None:
        return await _observed_llm_call(binding, method, call, messages, system_prompt, model_id)
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
        await _fire_llm(binding, session, "pre", event_index, method, messages, None, None, model_id, True)
        _record_cost(binding.agent, replay.model_id or model_id, replay.usage, replay.started_at)
        await _fire_llm(binding, session, "post", event_index, method, messages, response, replay.usage, model_id, True)
        return response
    await _fire_llm(binding, session, "pre", event_index, method, messages, None, None, model_id, False)
    started = time.time()
    response = jsonable(await call())
    session.live_llm_calls += 1
    usage = extract_usage(response, messages, system_prompt)
    entry = AgentCall(
        kind=LLM_CALL, index=index, method=method, response=response, usage=usage, model_id=model_id,
        messages_digest=digest, started_at=started, duration_s=time.time() - started,
    )
    await session.record(entry)
    _record_cost(binding.agent, model_id, usage, started)
    await _fire_llm(binding, session, "post", event_index, method, messages, response, usage, model_id, False)
    return response


async def _observed_llm_call(binding: AgentBinding, method, call, messages, system_prompt, model_id) -> Any:
    """Outside any checkpointed run: hooks and cost tracking only."""
    agent_id = binding.key
    pre = AgentCallEvent(agent_id=agent_id, execution_id="", call_index=0, method=method,
                         messages=list(messages), model_id=model_id)
    await binding.hooks.pre_agent_call(pre)
    started = time.time()
    response = await call()
    usage = extract_usage(response, messages, system_prompt)
    _record_cost(binding.agent, model_id, usage, started)
    post = AgentCallEvent(agent_id=agent_id, execution_id="", call_index=0, method=method,
                          messages=list(messages), response=response, usage=usage, model_id=model_id,
                          tool_calls=tool_calls_of(response))
    await binding.hooks.post_agent_call(post)
    return response


async def _fire_llm(
    binding: AgentBinding, session: CallSession, phase, index, method, messages, response, usage, model_id, replayed,
) -> None:
    event = AgentCallEvent(
        agent_id=session.agent_id, execution_id=session.execution_id, call_index=index, method=method,
        messages=list(messages), response=response, tool_calls=tool_calls_of(response),
        usage=usage, model_id=model_id, replayed=replayed,
    )
    try:
        if phase == "pre":
            await binding.hooks.pre_agent_call(event)
        else:
            await binding.hooks.post_agent_call(event)
    except Exception as exc:  # only RunStopped and a fault injector's errors escape the hooks
        raise session.set_fatal(exc)


def _record_cost(agent: Any, model_id: str | None, usage: dict[str, Any] | None, when: float) -> None:
    if not usage:
        return
    agent.cost_tracker.record_call(
        model_id=model_id or "unknown",
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        timestamp=when or None,
    )


# -- the proxy ---------------------------------------------------------------------------------------
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
