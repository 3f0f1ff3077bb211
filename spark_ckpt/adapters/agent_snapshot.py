"""Full, JSON-serializable snapshots of a Spark ``Agent``, and putting them back.

Spark 0.3.2's ``Agent.checkpoint()`` is not JSON-serializable (``last_result`` is a NodeMessage), drops
the strategy plan, step count and agent id, and never has cost calls; ``Agent.restore`` re-applies the
memory window and shares hook lists with the original config. This module does all of it as data.
"""

from __future__ import annotations

import copy
import enum
import time
from collections import deque
from typing import Any

from ..codec.convert import dumps_data, faithful_copy, loads_data
from ..engine.damage import damaged
from ..errors import CheckpointNotFoundError, ConfigError, CorruptCheckpointError, EncodeError, SparkCkptError
from ..model import AGENT_SNAPSHOT_VERSION

SNAPSHOT_KIND = "spark_ckpt.agent"
# Agent state keys with a dedicated place in the snapshot; everything else JSON-able goes to "custom".
_KNOWN_STATE_KEYS = {
    "messages", "tool_traces", "last_result", "last_error", "last_output", "history",
    "strategy_plan", "strategy_plan_events", "context_snapshot", "processing", "pending_inputs",
    "process_count",
}


_JSON_SCALARS = (str, bool, int, float)


def jsonable(value: Any) -> Any:
    """A JSON-able copy of ``value``. Objects JSON cannot hold become tagged descriptions, never silently
    something that looks like the original (a NodeMessage becomes its fields, an exception its type and text).

    For Spark's own parts of an agent (memory, traces, config), which the guide's layout holds as JSON;
    the user's own state keys are kept exactly instead (``take_snapshot``)."""
    if value is None or type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    for scalar in _JSON_SCALARS:  # a subclass (str-based enums were handled above)
        if isinstance(value, scalar):
            return scalar(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, deque, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, BaseException):
        return {"__exception__": type(value).__name__, "message": str(value)}
    fields = _pydantic_fields(value)
    if fields is not None:
        return {k: jsonable(v) for k, v in fields.items()}
    return {"__repr__": type(value).__name__, "text": str(value)}


def kept_exactly(value: Any, *, what: str) -> Any:
    """An exact copy of ``value`` when it can be stored (a tuple stays a tuple, a datetime a datetime),
    else its ``jsonable`` description; what a live run keeps is then what a replay or restore gets."""
    try:
        return faithful_copy(value, what=what)
    except EncodeError:
        return jsonable(value)


def _pydantic_fields(value: Any) -> dict[str, Any] | None:
    model_fields = getattr(type(value), "model_fields", None)
    if not isinstance(model_fields, dict):
        return None
    out = {name: getattr(value, name, None) for name in model_fields}
    out.update(getattr(value, "model_extra", None) or {})
    return out


def node_message_from_data(data: Any) -> Any:
    """Rebuild a NodeMessage from ``jsonable`` output (None stays None)."""
    if data is None:
        return None
    from spark.nodes.types import NodeMessage

    if not isinstance(data, dict):
        return NodeMessage(content=data)
    return NodeMessage(**data)


def _class_ref(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _model_info(model: Any) -> dict[str, Any]:
    inner = getattr(model, "inner_model", model)
    info: dict[str, Any] = {"type": _class_ref(inner)}
    try:
        cfg = inner.get_config()
        if isinstance(cfg, dict) and cfg.get("model_id") is not None:
            info["model_id"] = str(cfg["model_id"])
    except Exception:  # a model without a usable config still snapshots
        pass
    return info


def _config_data(agent: Any) -> dict[str, Any]:
    cfg = agent.config
    memory = cfg.memory_config
    strategy = getattr(agent, "reasoning_strategy", None)
    data = {
        "agent_class": _class_ref(agent),
        "name": cfg.name,
        "description": cfg.description,
        "system_prompt": cfg.system_prompt,
        "prompt_template": cfg.prompt_template,
        "output_mode": cfg.output_mode,
        "output_schema": _class_ref(cfg.output_schema) if cfg.output_schema else None,
        "max_steps": cfg.max_steps,
        "parallel_tool_execution": cfg.parallel_tool_execution,
        "tool_choice": cfg.tool_choice,
        "tools": sorted(agent.tool_registry.registry),
        "model": _model_info(agent.model),
        "memory_policy": {
            "policy": jsonable(memory.policy),
            "window": memory.window,
            "summary_max_chars": memory.summary_max_chars,
            "custom_callable": memory.callable is not None,
        },
        "reasoning_strategy": _class_ref(strategy) if strategy is not None else None,
        "budget": jsonable(cfg.budget) if cfg.budget is not None else None,
        "keep_in_state": list(getattr(cfg, "keep_in_state", []) or []),
    }
    return data


def _cost_calls(agent: Any) -> list[dict[str, Any]]:
    return [
        {
            "model_id": call.model_id,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cost": call.total_cost,
            "timestamp": call.timestamp,
            "namespace": call.namespace,
        }
        for call in agent.cost_tracker.calls
    ]


def _last_result_data(last_result: Any, messages: list[Any]) -> Any:
    data = jsonable(last_result)
    # The final answer is also the newest assistant message: store its text once.
    if isinstance(data, dict) and isinstance(data.get("content"), str) and messages:
        newest = messages[-1]
        if newest == {"role": "assistant", "content": [{"text": data["content"]}]}:
            data = {k: v for k, v in data.items() if k != "content"}
            data["content_from_memory"] = True
    return data


def _last_result_from_data(data: Any, messages: list[Any]) -> Any:
    if isinstance(data, dict) and data.get("content_from_memory"):
        data = {k: v for k, v in data.items() if k != "content_from_memory"}
        data["content"] = messages[-1]["content"][0]["text"]
    return node_message_from_data(data)


def take_snapshot(agent: Any, agent_id: str | None) -> dict[str, Any]:
    """The agent's full state as plain JSON-able data (the guide's checkpoint layout)."""
    state = agent._state
    messages = jsonable(list(agent.memory_manager.memory))
    # the user's own state keys: kept exactly (a faithful copy), or refused with their key path
    custom = faithful_copy({k: v for k, v in state.items() if k not in _KNOWN_STATE_KEYS}, what="agent state")
    memory = agent.memory_manager
    return {
        "kind": SNAPSHOT_KIND,
        "version": AGENT_SNAPSHOT_VERSION,
        "timestamp": time.time(),
        "agent_id": agent_id,
        "config": _config_data(agent),
        "memory": {
            "messages": messages,
            "memory_policy": {
                "policy": jsonable(memory.policy),
                "window": memory.window,
                "summary_max_chars": memory.summary_max_chars,
            },
        },
        "state": {
            "tool_traces": kept_exactly(state.get("tool_traces", []), what="tool traces"),
            "last_result": _last_result_data(state.get("last_result"), messages),
            "last_error": jsonable(state.get("last_error")),
            "last_output": jsonable(state.get("last_output")),
            "step_count": int(state.get("process_count", 0)),
            "custom": custom,
        },
        "cost_tracking": {"calls": _cost_calls(agent)},
        "strategy_state": {
            "strategy": _class_ref(agent.reasoning_strategy),
            "history": jsonable(state.get("history", [])),
            "strategy_plan": jsonable(state.get("strategy_plan")),
            "strategy_plan_events": jsonable(state.get("strategy_plan_events", [])),
        },
    }


def check_snapshot(data: Any) -> dict[str, Any]:
    """Validate the outer shape of a snapshot; ``CorruptCheckpointError`` names what is wrong."""
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"an agent checkpoint is a dict, got {type(data).__name__}")
    if data.get("kind") != SNAPSHOT_KIND:
        raise CorruptCheckpointError(
            "not a spark-ckpt agent checkpoint (kind is "
            f"{data.get('kind')!r}); build it with CheckpointedAgent.checkpoint()"
        )
    version = data.get("version")
    if type(version) is not int:
        raise CorruptCheckpointError(f"agent checkpoint has no valid version (found {type(version).__name__})")
    if version > AGENT_SNAPSHOT_VERSION:
        from ..errors import UnsupportedFormatError

        raise UnsupportedFormatError(
            f"agent checkpoint version {version!r} is newer than this spark-ckpt understands "
            f"({AGENT_SNAPSHOT_VERSION}); upgrade spark-ckpt"
        )
    for section in ("memory", "state", "cost_tracking", "strategy_state"):
        if not isinstance(data.get(section), dict):
            raise CorruptCheckpointError(f"agent checkpoint has no {section!r} section")
    return data


def apply_snapshot(agent: Any, data: dict[str, Any], what: str = "agent checkpoint") -> None:
    """Put a snapshot's state into ``agent`` (memory as stored: the window is not re-applied).

    The whole state is rebuilt from ``data`` before the agent is touched, so a snapshot of the wrong
    shape raises ``CorruptCheckpointError`` naming ``what`` and leaves the agent as it was."""
    check_snapshot(data)
    with damaged(what):
        messages, updates, removed, calls = _planned_state(data)
        agent.memory_manager.memory = messages
        state = agent._state
        state.update(updates)
        for key in removed:
            state.pop(key, None)
        tracker = agent.cost_tracker
        tracker.reset()
        for call in calls:
            tracker.record_call(**call)


def _planned_state(data: dict[str, Any]) -> tuple[list[Any], dict[str, Any], list[str], list[dict[str, Any]]]:
    """``(messages, agent state to set, state keys to drop, cost calls)`` rebuilt from a snapshot, in
    the order they are applied (custom keys after the known ones, the strategy's last); raises what
    content of the wrong shape raises."""
    messages = copy.deepcopy(_of(list, data["memory"].get("messages") or [], "memory.messages"))
    for message in messages:
        _of(dict, message, "a message in memory.messages")
    state_data = data["state"]
    updates: dict[str, Any] = {
        "tool_traces": copy.deepcopy(_of(list, state_data.get("tool_traces") or [], "state.tool_traces")),
        "last_result": _last_result_from_data(state_data.get("last_result"), messages),
        "last_error": copy.deepcopy(state_data.get("last_error")),
        "last_output": copy.deepcopy(state_data.get("last_output")),
        "process_count": int(state_data.get("step_count") or 0),
    }
    for key, value in _of(dict, state_data.get("custom") or {}, "state.custom").items():
        updates[key] = copy.deepcopy(value)
    strategy = data["strategy_state"]
    updates["history"] = copy.deepcopy(_of(list, strategy.get("history") or [], "strategy_state.history"))
    removed = []
    if strategy.get("strategy_plan") is not None:
        updates["strategy_plan"] = copy.deepcopy(strategy["strategy_plan"])
    else:
        removed.append("strategy_plan")
    if strategy.get("strategy_plan_events"):
        updates["strategy_plan_events"] = copy.deepcopy(strategy["strategy_plan_events"])
    else:
        removed.append("strategy_plan_events")
    calls = []
    for call in _of(list, data["cost_tracking"].get("calls") or [], "cost_tracking.calls"):
        timestamp, namespace = call.get("timestamp"), call.get("namespace")
        calls.append({
            "model_id": _of(str, call["model_id"], "a cost call's model_id"),
            "input_tokens": int(call["input_tokens"]),
            "output_tokens": int(call["output_tokens"]),
            "timestamp": None if timestamp is None else float(timestamp),
            "namespace": None if namespace is None else _of(str, namespace, "a cost call's namespace"),
        })
    return messages, updates, removed, calls


def _of(kind: type, value: Any, what: str) -> Any:
    """``value`` if it is a ``kind``; else the TypeError that marks the snapshot damaged."""
    if not isinstance(value, kind):
        raise TypeError(f"{what} is a {type(value).__name__}, not a {kind.__name__}")
    return value


# -- config isolation -------------------------------------------------------------------------------
_HOOK_LISTS = ("pre_process_hooks", "post_process_hooks", "before_llm_hooks", "after_llm_hooks")


def _node_bound(hook: Any) -> Any:
    """The Spark node a hook is a bound method of (Spark adds those to the config's lists), else None."""
    from spark.nodes.base import BaseNode

    owner = getattr(hook, "__self__", None)
    return owner if isinstance(owner, BaseNode) else None


def isolate_hooks(agent: Any) -> None:
    """Give ``agent`` hook lists of its own.

    Spark sets ``agent.after_llm_hooks`` (and the other hook lists) to its config's lists and appends
    the agent's own bound methods (``post_llm_hook``, ``process_keep_in_state``) to them: every agent
    built from one config then writes its answers into the memory of all the others. Afterwards the
    agent runs only its own bound hooks plus the user's, and the shared lists no longer call into it.
    """
    updates: dict[str, Any] = {}
    for name in _HOOK_LISTS:
        shared = getattr(agent, name, None)
        if not isinstance(shared, list):
            continue
        mine = [h for h in shared if _node_bound(h) in (None, agent)]
        for hook in [h for h in shared if _node_bound(h) is agent]:
            shared.remove(hook)
        setattr(agent, name, mine)
        updates[name] = [h for h in mine if _node_bound(h) is None]
    updates["memory_config"] = agent.config.memory_config.model_copy()
    agent.config = agent.config.model_copy(update=updates)
    agent.memory_config = agent.config.memory_config


def fresh_config(config: Any) -> Any:
    """A deep copy of an ``AgentConfig`` that shares only the model and tool objects with it.

    Bound methods of other agents that Spark left in the config's hook lists are dropped: the new
    agent adds its own.
    """
    if config is None:
        raise ConfigError("an AgentConfig is needed to rebuild the agent (the model and tools are not data)")
    memo: dict[int, Any] = {id(config.model): config.model}
    for tool in config.tools or []:
        memo[id(tool)] = tool
    hook_lists = {name: [h for h in getattr(config, name, None) or [] if _node_bound(h) is None]
                  for name in _HOOK_LISTS}
    for hooks in hook_lists.values():
        for hook in hooks:
            memo[id(hook)] = hook  # hooks are code: share them, never copy what they are bound to
    # the lists themselves may hold other agents' bound methods: copy them without those
    originals = {name: getattr(config, name) for name in hook_lists}
    for name, hooks in hook_lists.items():
        memo[id(originals[name])] = list(hooks)
    return copy.deepcopy(config, memo)


def write_snapshot_file(path: Any, snapshot: dict[str, Any]) -> None:
    """``snapshot`` as a JSON file, atomically (a crash leaves the old file or the new one)."""
    import os
    import uuid
    from pathlib import Path

    import orjson  # (imported here: the module stays light for the graph adapter)

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(dumps_data(snapshot, what="agent checkpoint", option=orjson.OPT_INDENT_2))
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SparkCkptError(f"cannot write agent checkpoint to {str(target)!r}: {exc}") from exc


def read_snapshot_file(path: Any) -> dict[str, Any]:
    """The snapshot a file written by ``write_snapshot_file`` holds (checked when it is applied)."""
    from pathlib import Path


    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"no agent checkpoint file at {str(path)!r}") from None
    try:
        return loads_data(raw)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"agent checkpoint file {str(path)!r} cannot be read: {exc}") from None
