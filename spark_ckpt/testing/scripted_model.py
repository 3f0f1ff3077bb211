"""``ScriptedModel``: a Spark model that answers from a script, to test agents offline and exactly.

    from spark_ckpt.testing.scripted_model import ScriptedModel, tool_call

    model = ScriptedModel([tool_call("lookup", order=42), "Order 42 ships today."])
    agent = Agent(config=AgentConfig(model=model, name="support", tools=[lookup]))

The script is read per *request* (the newest user message with text): its n-th reply answers the n-th
model call made for that request, n counted from the conversation sent (the assistant messages after
that request), not from the calls this instance received. So a recovering process, whose replayed
calls never reach the model, gets the same answer for its first live call as the crashed one would have.

``replies``: a list (the replies of every request), a dict ``{request text: [replies]}`` (``"*"``: any
other request), or a callable ``respond(messages) -> reply``. A reply is a str (the final answer), a
dict (a whole Spark response, e.g. from ``tool_call``), or an exception instance (raised: a provider
error). A request whose replies ran out raises ``ScriptExhausted`` naming it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from spark.models.base import Model


class ScriptExhausted(AssertionError):
    """The agent made more model calls for a request than its script has replies."""


def tool_call(name: str, call_id: str | None = None, **arguments: Any) -> dict[str, Any]:
    """A model response asking for one tool call (``tool_calls`` for several)."""
    return tool_calls((name, arguments, call_id))


def tool_calls(*calls: tuple[Any, ...]) -> dict[str, Any]:
    """A model response asking for several tool calls at once: ``(name, {arguments})`` or
    ``(name, {arguments}, call_id)`` each."""
    requested = []
    for i, (name, arguments, *rest) in enumerate(calls):
        call_id = rest[0] if rest and rest[0] else f"call-{name}-{i}"
        requested.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(arguments, sort_keys=True)}})
    return {"role": "assistant", "content": "", "stop_reason": "tool_use", "tool_calls": requested}


def texts(message: Mapping[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content or [] if isinstance(b, dict) and "text" in b]


def request_and_step(messages: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """The newest user request's text and how many model replies it already had."""
    request, step = "", 0
    for message in messages:
        role = message.get("role")
        if role == "user" and texts(message):  # (tool results come as user messages without text)
            request, step = texts(message)[-1], 0
        elif role == "assistant":
            step += 1
    return request, step


class ScriptedModel(Model):
    """See the module docstring. ``calls`` lists ``(request, step)`` of every call that reached it."""

    def __init__(
        self, replies: Sequence[Any] | Mapping[str, Sequence[Any]] | Callable[[Any], Any] = (), *,
        model_id: str = "scripted",
    ) -> None:
        super().__init__()
        self.replies = replies
        self.model_id = model_id
        self.calls: list[tuple[str, int]] = []

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {"model_id": self.model_id}

    def reply_for(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        request, step = request_and_step(messages)
        self.calls.append((request, step))
        if callable(self.replies):
            reply = self.replies(messages)
        else:
            script = self.replies
            if isinstance(script, Mapping):
                if request not in script and "*" not in script:
                    raise ScriptExhausted(f"ScriptedModel has no replies for the request {request!r}")
                script = script.get(request, script.get("*"))
            if step >= len(script):
                raise ScriptExhausted(f"ScriptedModel was called {step + 1} times for the request {request!r} "
                                      f"but its script has {len(script)} replies")
            reply = script[step]
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return {"role": "assistant", "content": reply, "stop_reason": "end_turn"}
        return {"role": "assistant", "stop_reason": "end_turn", **dict(reply)}

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        return self.reply_for(messages)

    async def get_json(self, output_model, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        reply = self.reply_for(messages)
        content = reply.get("content")
        if not isinstance(content, str):
            reply["content"] = json.dumps(content)
        return reply
