"""CheckpointedAgent in one process: snapshots, restore, hooks, costs, failures, storage growth."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest
from agent_workers.scripted import ScriptedModel, charge, step
from hypothesis import given, settings
from hypothesis import strategies as st
from spark.agents import Agent, AgentConfig
from spark.agents.memory import MemoryConfig
from spark.agents.strategies import PlanAndSolveStrategy

from spark_ckpt import (
    BudgetExceededError, CheckpointConfig, CheckpointNotFoundError, ConfigError, CorruptCheckpointError,
    NothingToRecoverError, checkpointed, hookimpl,
)
from spark_ckpt.adapters import agent_delta
from spark_ckpt.adapters.agent import CheckpointedAgent
from spark_ckpt.plugins import get_plugin_manager


def sync(test):
    """Run an async test body with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return run


def make_config(**overrides: Any) -> AgentConfig:
    values: dict[str, Any] = dict(model=ScriptedModel(), name="bot", tools=[step, charge])
    values.update(overrides)
    return AgentConfig(**values)


def wrap(agent: Agent, tmp_path, **kwargs: Any) -> CheckpointedAgent:
    cfg = CheckpointConfig(backend="sqlite", path=str(tmp_path / "agent.db"), lease_ttl_s=0.5)
    return checkpointed(agent, config=cfg, agent_id=kwargs.pop("agent_id", "bot"), **kwargs)


@pytest.fixture
def plugin():
    """Register plugins for one test only (and never leave them behind)."""
    pm = get_plugin_manager()
    names: list[str] = []

    def register(obj: Any) -> Any:
        name = f"undo-{len(names)}-{id(obj)}"
        pm.register(obj, name=name)
        names.append(name)
        return obj

    yield register
    for name in names:
        pm.unregister(name=name)


# -- snapshots ------------------------------------------------------------------------------------
@sync
async def test_checkpoint_is_plain_json_with_every_section(tmp_path):
    """checkpoint() holds config, memory, state, costs, strategy state and the agent id, as plain JSON."""
    agent = wrap(Agent(make_config(reasoning_strategy=PlanAndSolveStrategy(), system_prompt="be brief")), tmp_path)
    await agent.run("task:2")
    ckpt = agent.checkpoint()
    assert json.loads(json.dumps(ckpt)) == ckpt
    assert ckpt["agent_id"] == "bot"
    assert ckpt["config"]["system_prompt"] == "be brief"
    assert ckpt["config"]["tools"] == ["charge", "step"]
    assert ckpt["memory"]["memory_settings"]["window"] == 10
    assert [m["role"] for m in ckpt["memory"]["messages"]] == ["user", "assistant"]
    assert [t["output"] for t in ckpt["state"]["tool_traces"]] == ["r0", "r1"]
    assert ckpt["state"]["step_count"] == 1
    assert ckpt["state"]["last_result"]["content_from_memory"] is True
    assert [c["input_tokens"] for c in ckpt["cost_tracking"]["calls"]] == [10, 30, 50]
    assert all(c["model_id"] == "gpt-4o-mini" and c["cost"] > 0 for c in ckpt["cost_tracking"]["calls"])
    plan = ckpt["strategy_state"]["strategy_plan"]
    assert [s["status"] for s in plan["steps"]] == ["completed", "completed", "in_progress"]
    assert [e["event"] for e in ckpt["strategy_state"]["strategy_plan_events"]] == ["completed:step-1", "completed:step-2"]


@sync
async def test_checkpoint_has_the_guides_names_and_types_and_older_shapes_restore(tmp_path):
    """The guide's "Agent Checkpoint Contents": version text, ISO timestamp, memory_policy by name, each
    cost call's model, react_history; spark-ckpt's values beside them. Both shapes restore alike."""
    from spark_ckpt.guide_views import agent_stored_form

    config = make_config()
    agent = wrap(Agent(config), tmp_path)
    await agent.run("task:1")
    ckpt = agent.checkpoint()
    assert ckpt["version"] == "2.0" and ckpt["format_version"] == 2
    assert ckpt["timestamp"].endswith("Z") and isinstance(ckpt["created_at"], float)
    policy = ckpt["memory"]["memory_policy"]
    assert isinstance(policy, str) and ckpt["memory"]["memory_settings"]["policy"] == policy
    assert [c["model"] for c in ckpt["cost_tracking"]["calls"]] == [c["model_id"] for c in ckpt["cost_tracking"]["calls"]]
    assert ckpt["strategy_state"]["react_history"] == ckpt["strategy_state"]["history"]
    stored = agent_stored_form(ckpt)  # the shape spark-ckpt stores, and older releases returned
    assert stored["version"] == 2 and isinstance(stored["timestamp"], float)
    assert isinstance(stored["memory"]["memory_policy"], dict) and "react_history" not in stored["strategy_state"]
    for shape in (ckpt, stored):
        restored = CheckpointedAgent.restore(shape, config, CheckpointConfig(backend="memory"))
        assert restored.checkpoint()["memory"] == ckpt["memory"]
        assert restored.checkpoint()["cost_tracking"] == ckpt["cost_tracking"]


@sync
async def test_restore_round_trips_every_field_and_answers_the_same(tmp_path):
    """A restored agent has the same snapshot, and its next answer equals the original's."""
    config = make_config(reasoning_strategy=PlanAndSolveStrategy())
    original = wrap(Agent(config), tmp_path)
    await original.run("task:2")
    original.agent._state["notes"] = {"k": [1, 2]}
    ckpt = original.checkpoint()
    path = tmp_path / "bot.json"
    original.save_checkpoint(path)

    restored = CheckpointedAgent.load_checkpoint(path, config, checkpoint_config=CheckpointConfig(backend="memory"))
    again = restored.checkpoint()
    for section in ("config", "memory", "state", "cost_tracking", "strategy_state", "agent_id", "version"):
        assert again[section] == ckpt[section], section
    assert restored.agent.result.content == original.agent.result.content

    a = await original.run("hello")
    b = await restored.run("hello")
    assert a.content == b.content
    assert original.checkpoint()["memory"] == restored.checkpoint()["memory"]


@sync
async def test_restore_does_not_reapply_a_smaller_memory_window(tmp_path):
    """History longer than the new config's window comes back whole; the window applies from the next message on."""
    original = wrap(Agent(make_config(memory_config=MemoryConfig(window=6))), tmp_path)
    for i in range(3):
        await original.run(f"hi {i}")
    ckpt = original.checkpoint()
    assert len(ckpt["memory"]["messages"]) == 6
    restored = CheckpointedAgent.restore(
        ckpt, make_config(memory_config=MemoryConfig(window=4)), checkpoint_config=CheckpointConfig(backend="memory")
    )
    assert restored.checkpoint()["memory"]["messages"] == ckpt["memory"]["messages"]
    restored.add_message_to_history("one more")
    # Spark's rolling window drops one old message per new one: the history shrinks no faster
    assert restored.agent.messages == ckpt["memory"]["messages"][1:] + [{"role": "user", "content": "one more"}]


@sync
async def test_two_agents_from_one_config_stay_independent(tmp_path):
    """Agents built from one AgentConfig (or restored with it) never write into each other's memory."""
    config = make_config()
    first = wrap(Agent(config), tmp_path, agent_id="a")
    second = wrap(Agent(config), tmp_path, agent_id="b")
    third = CheckpointedAgent.restore(first.checkpoint(), config, checkpoint_config=CheckpointConfig(backend="memory"))
    await first.run("for first")
    await second.run("for second")
    await third.run("for third")
    texts = [[m["content"][0]["text"] for m in x.agent.messages] for x in (first, second, third)]
    assert texts[0] == ["for first", "echo: for first (1 messages)"]
    assert texts[1] == ["for second", "echo: for second (1 messages)"]
    assert texts[2] == ["for third", "echo: for third (1 messages)"]
    assert config.after_llm_hooks == []


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    """Missing files, broken JSON and foreign dicts are refused with SparkCkptError subclasses."""
    with pytest.raises(CheckpointNotFoundError):
        CheckpointedAgent.load_checkpoint(tmp_path / "nope.json", make_config())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError):
        CheckpointedAgent.load_checkpoint(tmp_path / "bad.json", make_config())
    with pytest.raises(CorruptCheckpointError, match="not a spark-ckpt agent checkpoint"):
        CheckpointedAgent.restore({"memory": {}}, make_config())
    with pytest.raises(ConfigError, match="agent_id"):
        checkpointed(Agent(make_config(name=None)), config=CheckpointConfig(backend="memory"))


@sync
async def test_restore_takes_the_agent_config_and_the_checkpoint_config_in_either_position(tmp_path, monkeypatch):
    """restore() tells an AgentConfig from a CheckpointConfig by type, so the guide's
    restore(snapshot, config), keywords and either positional order all give the real model back."""
    monkeypatch.chdir(tmp_path)  # (restored without a checkpoint config: the default store, ./checkpoints.db)
    original = wrap(Agent(make_config()), tmp_path)
    await original.run("task:1")
    snapshot = original.checkpoint()
    memory = CheckpointConfig(backend="memory")
    for restored in (
        CheckpointedAgent.restore(snapshot, agent_config=make_config(), checkpoint_config=memory),
        CheckpointedAgent.restore(snapshot, make_config(), memory),
        CheckpointedAgent.restore(snapshot, memory, make_config()),
        CheckpointedAgent.restore(snapshot, make_config()),
    ):
        assert isinstance(restored.agent.config.model, ScriptedModel)
        assert restored.checkpoint()["memory"] == snapshot["memory"]
        assert (await restored.run("task:1")).content == "done(task:1): r0"
    assert CheckpointedAgent.restore(snapshot, make_config(), memory).config is memory


def test_restore_without_the_agent_config_says_what_to_pass():
    """Given only a CheckpointConfig (the guide's positional form) or nothing, restore() raises a
    ConfigError naming agent_config: never an AttributeError, never an echo model in its place."""
    snapshot = CheckpointedAgent(Agent(make_config()), config=CheckpointConfig(backend="memory")).checkpoint()
    for args in ((CheckpointConfig(backend="memory"),), (), (None, CheckpointConfig(backend="memory"))):
        with pytest.raises(ConfigError, match="agent_config=AgentConfig"):
            CheckpointedAgent.restore(snapshot, *args)
    with pytest.raises(ConfigError, match="agent_config=AgentConfig"):
        CheckpointedAgent.restore(snapshot, checkpoint_config=CheckpointConfig(backend="memory"))
    with pytest.raises(ConfigError, match="got a dict"):
        CheckpointedAgent.restore(snapshot, {"model": "gpt"})


@sync
async def test_restore_latest_refuses_a_damaged_state_and_leaves_the_agent_as_it_was(tmp_path):
    """A stored state of the wrong shape is a CorruptCheckpointError naming the record; the agent's
    memory is not half replaced."""
    import sqlite3
    from contextlib import closing

    from spark_ckpt.codec import Codec, Identity

    agent = wrap(Agent(make_config()), tmp_path)
    await agent.run("task:1")
    for header in agent.list_checkpoints():  # the full state the newest one is a delta of
        record, _ = Codec().decode_data(agent.backend.get(header.checkpoint_id).blob)
        if record.get("state_full"):
            break
    record["state_full"]["memory"]["messages"] = [5]
    blob = Codec().encode_data(record, Identity(header.graph_id, header.execution_id, header.seq))
    with closing(sqlite3.connect(tmp_path / "agent.db")) as conn, conn:  # (the connection's "with" only commits)
        conn.execute("UPDATE checkpoints SET blob = ? WHERE checkpoint_id = ?", (blob, header.checkpoint_id))
    fresh = wrap(Agent(make_config()), tmp_path)
    fresh.add_message_to_history("kept")
    newest = agent.list_checkpoints(limit=1)[0].checkpoint_id
    with pytest.raises(CorruptCheckpointError, match=f"agent checkpoint {newest} is damaged"):
        fresh.restore_latest()
    assert fresh.agent.messages == [{"role": "user", "content": "kept"}]


@sync
async def test_restore_latest_continues_a_conversation_in_a_fresh_agent(tmp_path):
    """A new agent object picks up the stored conversation, built from deltas over several runs."""
    first = wrap(Agent(make_config(memory_config=MemoryConfig(window=100))), tmp_path)
    for i in range(5):
        await first.run(f"turn {i}")
    second = wrap(Agent(make_config(memory_config=MemoryConfig(window=100))), tmp_path)
    assert second.restore_latest()
    assert second.checkpoint()["memory"] == first.checkpoint()["memory"]
    assert second.checkpoint()["cost_tracking"] == first.checkpoint()["cost_tracking"]
    with pytest.raises(NothingToRecoverError):
        await second.recover_and_continue()


# -- hooks, costs, failures -------------------------------------------------------------------------
@sync
async def test_plugin_sees_every_llm_and_tool_call(tmp_path, plugin):
    """pre/post agent-call hooks fire around every model call and every tool call, with usage."""
    seen: list[tuple[str, str, Any]] = []

    class Observer:
        @hookimpl
        def spark_ckpt_pre_agent_call(self, event):
            seen.append(("pre", event.method, event.tool_name))

        @hookimpl
        def spark_ckpt_post_agent_call(self, event):
            seen.append(("post", event.method, event.usage["input_tokens"] if event.usage else event.response))

    plugin(Observer())
    agent = wrap(Agent(make_config()), tmp_path)
    await agent.run("task:2")
    assert seen == [
        ("pre", "get_text", None), ("post", "get_text", 10),
        ("pre", "tool", "step"), ("post", "tool", {"toolResult": {"toolUseId": "call-0", "content": [{"text": "r0"}], "status": "success"}}),
        ("pre", "get_text", None), ("post", "get_text", 30),
        ("pre", "tool", "step"), ("post", "tool", {"toolResult": {"toolUseId": "call-1", "content": [{"text": "r1"}], "status": "success"}}),
        ("pre", "get_text", None), ("post", "get_text", 50),
    ]


@sync
async def test_budget_plugin_stops_the_run_and_recovery_does_not_repay(tmp_path, plugin):
    """A plugin raising BudgetExceededError stops the run; after raising the budget, recovery replays
    the calls already paid for."""
    model = ScriptedModel()
    limit = {"tokens": 50}

    class Budget:
        spent = 0

        @hookimpl
        def spark_ckpt_post_agent_call(self, event):
            if event.usage:
                self.spent += event.usage["input_tokens"] + event.usage["output_tokens"]
                if self.spent > limit["tokens"]:
                    raise BudgetExceededError(f"spent {self.spent} tokens")

    plugin(Budget())
    agent = wrap(Agent(make_config(model=model)), tmp_path)
    with pytest.raises(BudgetExceededError, match="spent 99 tokens"):
        await agent.run("task:3")
    assert model.calls == 3
    assert agent.agent.messages == []  # the stopped run left no error text in memory
    limit["tokens"] = 10_000
    result = await agent.recover_and_continue()
    assert result.content == "done(task:3): r0,r1,r2"
    assert model.calls == 4  # 3 replayed, 1 new
    assert [c["input_tokens"] for c in agent.checkpoint()["cost_tracking"]["calls"]] == [10, 30, 50, 70]


class BrokenModel(ScriptedModel):
    """Fails once on its n-th call."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        if self.calls + 1 == self.fail_on:
            self.fail_on = -1
            self.calls += 1
            raise ConnectionError("provider down")
        return await super().get_text(messages, system_prompt, tool_specs, tool_choice, **kwargs)


@sync
async def test_swallowed_agent_failure_fires_on_failure_and_is_recoverable(tmp_path, plugin):
    """Spark's error dict fires spark_ckpt_on_failure, keeps the error out of memory and leaves the run
    recoverable with the completed calls replayed."""
    failures = []

    class Watch:
        @hookimpl
        def spark_ckpt_on_failure(self, event):
            failures.append((event.agent_id, event.error_type, event.message))

    plugin(Watch())
    model = BrokenModel(fail_on=3)
    agent = wrap(Agent(make_config(model=model)), tmp_path)
    result = await agent.run("task:3")
    assert result.content["error_type"] == "ConnectionError"
    assert failures == [("bot", "ConnectionError", "provider down")]
    assert agent.agent.messages == []
    assert agent.list_checkpoints(limit=1)[0].status == "failed"
    result = await agent.recover_and_continue()
    assert result.content == "done(task:3): r0,r1,r2"
    assert agent.last_session.replayed == 4  # llm, tool, llm, tool before the failing call
    assert model.calls == 3 + 2


# -- storage ---------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    old=st.dictionaries(st.sampled_from("abc"), st.one_of(st.integers(), st.lists(st.integers(), max_size=6))),
    new=st.dictionaries(st.sampled_from("abc"), st.one_of(st.integers(), st.lists(st.integers(), max_size=6))),
)
def test_delta_apply_inverts_diff(old, new):
    """apply(old, diff(old, new)) == new for any pair of states."""
    assert agent_delta.apply(old, agent_delta.diff(old, new)) == new


def test_rolling_window_delta_stores_only_new_messages():
    """A list that dropped from its front and grew at its end is stored as the new items only."""
    old = {"memory": {"messages": [1, 2, 3, 4]}}
    new = {"memory": {"messages": [3, 4, 5, 6]}}
    assert agent_delta.diff(old, new) == [["ext", ["memory", "messages"], 2, [5, 6]]]


@sync
async def test_long_conversation_storage_is_linear(tmp_path):
    """Checkpointing after every turn stores at most ~2x the raw bytes of the messages."""
    agent = wrap(Agent(make_config(memory_config=MemoryConfig(window=10_000))), tmp_path)
    filler = "lorem ipsum dolor sit amet " * 8
    for i in range(60):
        await agent.run(f"turn {i}: {filler}")
    stored = sum(h.size for h in agent.list_checkpoints())
    raw = sum(len(json.dumps(m, separators=(",", ":"))) for m in agent.agent.messages)
    assert stored <= 2 * raw, (stored, raw)


@sync
async def test_prune_keeps_the_state_chain_recovery_needs(tmp_path):
    """Retention deletes old records but never the full snapshot the newest deltas build on."""
    cfg = CheckpointConfig(backend="sqlite", path=str(tmp_path / "agent.db"), retention_count=2)
    agent = checkpointed(Agent(make_config(memory_config=MemoryConfig(window=100))), config=cfg, agent_id="bot")
    for i in range(6):
        await agent.run(f"turn {i}")
    remaining = agent.list_checkpoints()
    assert 2 <= len(remaining) < 7
    fresh = checkpointed(Agent(make_config(memory_config=MemoryConfig(window=100))), config=cfg, agent_id="bot")
    assert fresh.restore_latest()
    assert fresh.checkpoint()["memory"] == agent.checkpoint()["memory"]


# -- durability modes ------------------------------------------------------------------------------
class _CountingPuts:
    """Wraps a backend's aput to record what is stored while the run is still going."""

    def __init__(self, agent: CheckpointedAgent) -> None:
        self.during_run: list[str] = []
        self.tasks: set[Any] = set()  # the asyncio tasks the writes ran in
        backend = agent.backend
        original = backend.aput

        async def aput(header, blob, *, lease=None):
            if agent._running:
                self.during_run.append(header.checkpoint_id)
            self.tasks.add(asyncio.current_task())
            await original(header, blob, lease=lease)

        backend.aput = aput


def _stored_events(agent: CheckpointedAgent) -> list[tuple[int, str]]:
    return sorted((h.seq, h.status) for h in agent.list_checkpoints())


@pytest.mark.parametrize("mode", ["async", "exit"])
@sync
async def test_standalone_agent_honours_async_and_exit_durability(tmp_path, mode):
    """"exit" stores nothing while the agent runs and everything when it ends; "async" writes while it
    runs. Either way the stored run equals the "sync" one, and the answer is the same."""
    reference = wrap(Agent(make_config()), tmp_path / "sync", keep_call_journal=True)
    expected = await reference.run("task:3")
    cfg = CheckpointConfig(backend="sqlite", path=str(tmp_path / f"{mode}.db"), durability=mode)
    agent = checkpointed(Agent(make_config()), config=cfg, agent_id="bot", keep_call_journal=True)
    puts = _CountingPuts(agent)
    run_task = asyncio.current_task()
    result = await agent.run("task:3")
    assert result.content == expected.content
    assert _stored_events(agent) == _stored_events(reference)
    if mode == "exit":
        assert puts.during_run == []
    else:  # the start record and the call journal, while running, from tasks of their own
        assert len(puts.during_run) >= 6
        assert len(puts.tasks - {run_task}) >= 6


@sync
async def test_exit_durability_still_records_a_failed_run_for_recovery(tmp_path):
    """With "exit", an ordinary failure writes the held journal and the failed record, so recovery
    replays the calls made before it."""
    cfg = CheckpointConfig(backend="sqlite", path=str(tmp_path / "exit.db"), durability="exit")
    model = BrokenModel(fail_on=3)
    agent = checkpointed(Agent(make_config(model=model)), config=cfg, agent_id="bot")
    result = await agent.run("task:3")
    assert result.content["error_type"] == "ConnectionError"
    assert agent.list_checkpoints(limit=1)[0].status == "failed"
    result = await agent.recover_and_continue()
    assert result.content == "done(task:3): r0,r1,r2"
    assert agent.last_session.replayed == 4
