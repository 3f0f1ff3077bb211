"""Tools marked not safe to re-run: the marker, how a marked tool is recognised, and the refusal.
(The same marker marks graph nodes: ``graph_unsafe_nodes``.)

A tool with a side effect that must not happen twice (a payment, an e-mail) is marked with
``@not_safe_to_rerun`` (or named in ``unsafe_tools``). Before such a tool runs, the call journal
records that it started (``TOOL_STARTED``); if the process dies before its result is journaled,
recovery cannot know whether it took effect, so it raises ``UnsafeToRetryError`` naming the tool
instead of calling it again, unless recovery is told ``allow_unsafe_rerun=True``.

Invariants: the marker is an attribute on the tool object or on the function it wraps, so it works
above or below ``@tool``; marking changes nothing else about the tool. No Spark import.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import UnsafeToRetryError
from ..model import AgentCall

UNSAFE_ATTR = "_spark_ckpt_not_safe_to_rerun"


def not_safe_to_rerun(tool: Any) -> Any:
    """Mark a tool (``@tool`` object or plain function), or a graph node, as not safe to run twice.

    If such a tool was running when the process died, recovery raises ``UnsafeToRetryError`` naming it
    instead of calling it again. Usable as a decorator above ``@tool``.

    A graph node is marked through its class (``@not_safe_to_rerun`` above ``class Charge(Node)``), an
    instance (``not_safe_to_rerun(node)``) or its ``process`` method (as a decorator in the class body,
    or ``not_safe_to_rerun(node.process)``, which marks that instance); see ``graph_unsafe_nodes``.
    """
    if inspect.ismethod(tool) and tool.__name__ == "process":  # a node's bound process(): that node
        setattr(tool.__self__, UNSAFE_ATTR, True)
        return tool
    setattr(tool, UNSAFE_ATTR, True)
    return tool


def tool_is_unsafe(agent: Any, name: str | None, extra: set[str]) -> bool:
    """Whether the agent's tool ``name`` is marked, or named in ``extra`` (``unsafe_tools``)."""
    if name is None:
        return False
    if name in extra:
        return True
    tool = agent.tool_registry.registry.get(name)
    return bool(getattr(tool, UNSAFE_ATTR, False) or getattr(getattr(tool, "_tool_func", None), UNSAFE_ATTR, False))


def unsafe_error(call: AgentCall, where: str) -> UnsafeToRetryError:
    return UnsafeToRetryError(
        f"tool {call.tool_name!r} (call id {call.tool_use_id!r}, arguments {call.tool_args!r}) of {where} "
        "was running when the process stopped and is marked not safe to re-run: it may or may not have "
        "taken effect. Check its side effect, then recover with allow_unsafe_rerun=True to run it again"
    )
