"""An offline, conversation-driven model and tools for agent checkpoint tests.

The model reads the conversation: for the newest user request ``task:<n>`` it asks for tool ``step``
``n`` times (one call per response, each with the number of results so far), then answers with all
tool results joined. Every *real* model or tool call appends a line to the file named by
``SPARK_CKPT_TEST_COUNTER`` (if set), so a test can count what a process actually paid for.
A sentinel-based trigger kills the process at an exact point (see ``maybe_kill``).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from spark.models.base import Model
from spark.tools import tool

COUNTER_ENV = "SPARK_CKPT_TEST_COUNTER"
KILL_ENV = "SPARK_CKPT_TEST_KILL"  # "<point>:<n>:<sentinel path>"


def count(what: str) -> None:
    path = os.environ.get(COUNTER_ENV)
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


def maybe_kill(point: str, n: int) -> None:
    """SIGKILL this process the first time ``point`` is reached for the ``n``-th time."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want_point, want_n, sentinel = spec.split(":", 2)
    if want_point != point or int(want_n) != n or os.path.exists(sentinel):
        return
    with open(sentinel, "w") as f:
        f.write(f"{point}:{n}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content or [] if isinstance(b, dict) and "text" in b]


def _tool_results(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b["toolResult"]["content"][0]["text"] for b in content if isinstance(b, dict) and "toolResult" in b]


class ScriptedModel(Model):
    """Replies depend only on the conversation it is sent."""

    def __init__(self, model_id: str = "gpt-4o-mini", parallel: int = 1, tool_name: str = "step") -> None:
        super().__init__()
        self.model_id = model_id
        self.tool_name = tool_name
        self.parallel = parallel
        self.calls = 0

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {"model_id": self.model_id}

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        self.calls += 1
        count("llm")
        # the newest user request and the tool results that came after it
        request, results = None, []
        for message in messages:
            texts = _texts(message) if message.get("role") == "user" else []
            if texts:  # a new user request (tool results carry no text blocks)
                request, results = (texts[-1] if texts[-1].startswith("task:") else None), []
            results.extend(_tool_results(message))
        usage = {"input_tokens": 10 * len(messages), "output_tokens": 3}
        if request is None:
            newest = next((t for m in reversed(messages) if m.get("role") == "user" for t in _texts(m)), "")
            answer = f"echo: {newest} ({len(messages)} messages)"
            return {"role": "assistant", "content": answer, "stop_reason": "end_turn", "usage": usage}
        wanted = int(request.split(":")[1])
        if len(results) < wanted:
            batch = min(self.parallel, wanted - len(results))
            calls = [
                {
                    "id": f"call-{len(results) + i}",
                    "type": "function",
                    "function": {"name": self.tool_name, "arguments": json.dumps({"i": len(results) + i})},
                }
                for i in range(batch)
            ]
            return {"role": "assistant", "content": "", "stop_reason": "tool_use", "tool_calls": calls, "usage": usage}
        return {
            "role": "assistant", "content": f"done({request}): " + ",".join(results),
            "stop_reason": "end_turn", "usage": usage,
        }

    async def get_json(self, output_model, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        reply = await self.get_text(messages, system_prompt, tool_specs, tool_choice)
        reply["content"] = json.dumps({"role": "assistant", "content": [str(reply["content"])]})
        return reply


_tool_calls = {"step": 0}


@tool
def step(i: int) -> str:
    """Do one unit of work.

    Args:
        i: which unit
    """
    _tool_calls["step"] += 1
    maybe_kill("tool", _tool_calls["step"])
    count("tool:step")
    return f"r{i}"


@tool
def charge(i: int) -> str:
    """Charge a card (not safe to run twice).

    Args:
        i: which charge
    """
    _tool_calls.setdefault("charge", 0)
    _tool_calls["charge"] += 1
    maybe_kill("tool", _tool_calls["charge"])
    count("tool:charge")
    return f"charged{i}"
