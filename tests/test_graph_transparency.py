"""Wrapping is transparent: same outputs, graph state, node call order and exceptions as bare Spark."""

from __future__ import annotations

import asyncio

import pytest
from spark.agents import Agent
from spark.graphs import Graph
from spark.nodes import Node

import graphs
from spark_ckpt import CheckpointConfig, checkpointed


def run_both(build, inputs, config: CheckpointConfig):
    graphs.CALLS.clear()
    bare = build()
    bare_result = asyncio.run(bare.run(inputs))
    bare_calls = list(graphs.CALLS)
    graphs.CALLS.clear()
    wrapped = checkpointed(build(), config=config, graph_id="transparency")
    wrapped_result = asyncio.run(wrapped.run(inputs))
    return (bare, bare_result, bare_calls), (wrapped, wrapped_result, list(graphs.CALLS))


@pytest.fixture(params=["memory", "sqlite", "file"])
def config(request, tmp_path) -> CheckpointConfig:
    if request.param == "memory":
        return CheckpointConfig(backend="memory://")
    return CheckpointConfig(backend=request.param, path=str(tmp_path / request.param))


@pytest.mark.parametrize("name,inputs", [("pipeline", {"n": 4}), ("pipeline", {"n": 5}), ("chain", {}), ("fan_out", {"value": 7})])
def test_same_result_state_and_order(name, inputs, config) -> None:
    """Loops, conditional edges and fan-out give identical results, state and call order when wrapped."""
    (bare, r1, calls1), (wrapped, r2, calls2) = run_both(lambda: graphs.build(name), inputs, config)
    assert r2.content == r1.content
    assert wrapped.get_state_snapshot() == bare.state.get_snapshot()
    assert calls2 == calls1 if name != "fan_out" else sorted(calls2) == sorted(calls1)
    for key in ("report", "transform"):
        if key in wrapped.node_keys:
            node = wrapped._nodes_by_key[key]
            bare_node = next(n for n in bare.nodes if n.id == key)
            assert node.state["process_count"] == bare_node.state["process_count"]


def test_same_exception(config, monkeypatch) -> None:
    """A failing node raises the very same exception type and message to the caller."""
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    bare, wrapped = graphs.chain(), checkpointed(graphs.chain(), config=config, graph_id="fails")
    with pytest.raises(RuntimeError) as bare_exc:
        asyncio.run(bare.run({}))
    with pytest.raises(RuntimeError) as wrapped_exc:
        asyncio.run(wrapped.run({}))
    assert str(wrapped_exc.value) == str(bare_exc.value) == "injected failure in s2"
    assert wrapped.get_state_snapshot() == bare.state.get_snapshot()


def test_repeated_runs_keep_state_like_spark(config) -> None:
    """Several runs of one wrapped graph behave like several runs of the bare graph (state carries over)."""
    bare, wrapped = graphs.chain(3), checkpointed(graphs.chain(3), config=config, graph_id="again")
    for _ in range(3):
        asyncio.run(bare.run({}))
        asyncio.run(wrapped.run({}))
    assert wrapped.get_state_snapshot() == bare.state.get_snapshot()
    assert wrapped.get_state_snapshot()["count"] == 9
    # each run is its own completed execution
    executions = wrapped.backend.executions(graph_id="again")
    assert len(executions) == 3 and all(h.status == "completed" for h in executions)


def test_agent_node_graph_is_transparent(config) -> None:
    """A graph with a Spark Agent node (offline echo model) gives the same answer wrapped and bare."""

    class Prepare(Node):
        async def process(self, context):
            return {"prompt": f"summarise {context.inputs.content['topic']}"}

    class Ask(Node):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.agent = Agent()

        async def process(self, context):
            result = await self.agent.run(context.inputs.content["prompt"])
            return {"answer": str(getattr(result, "content", result))}

    def build():
        prepare = Prepare(id="prepare")
        ask = Ask(id="ask")
        prepare >> ask
        return Graph(start=prepare)

    (_, r1, _), (_, r2, _) = run_both(build, {"topic": "checkpoints"}, config)
    assert r2.content == r1.content
    assert "checkpoints" in r2.content["answer"]


def test_disabled_config_runs_bare(tmp_path) -> None:
    """enabled=False: the graph runs untouched and nothing is stored."""
    wrapped = checkpointed(graphs.chain(2), config=CheckpointConfig(enabled=False, backend="sqlite", path=str(tmp_path / "x.db")))
    result = asyncio.run(wrapped.run({}))
    assert result.content["count"] == 2
    assert wrapped.list_checkpoints() == []


def test_graph_with_an_agent_node_is_transparent(config) -> None:
    """A Spark Agent used directly as a graph node (offline echo model): same answer, state and memory."""
    from spark.agents import AgentConfig
    from spark.models.echo import EchoModel

    class Prepare(Node):
        async def process(self, context):
            await context.graph_state.set("topic", context.inputs.content["topic"])
            return {"text": f"tell me about {context.inputs.content['topic']}"}

    def build():
        prepare = Prepare(id="prepare")
        agent = Agent(AgentConfig(model=EchoModel(), name="echo", prompt_template="{{ text }}"))
        prepare >> agent
        return Graph(start=prepare)

    (bare, r1, _), (wrapped, r2, _) = run_both(build, {"topic": "checkpoints"}, config)
    assert r2.content == r1.content and "checkpoints" in str(r2.content)
    assert wrapped.get_state_snapshot() == bare.state.get_snapshot()
    bare_agent = next(n for n in bare.nodes if isinstance(n, Agent))
    wrapped_agent = wrapped._nodes_by_key["echo"]
    assert wrapped_agent.memory_manager.memory == bare_agent.memory_manager.memory
    # the agent's full snapshot travels in the graph checkpoint
    assert "echo" in wrapped.get_last_checkpoint().node_extras


def test_agent_node_in_a_loop_stores_each_message_once(tmp_path) -> None:
    """An agent visited every other superstep: its state goes into graph checkpoints as deltas, so
    storage grows with the conversation, not with its square; every checkpoint still reads back whole."""
    import orjson
    from spark.agents import AgentConfig
    from spark.agents.memory import MemoryConfig
    from spark.models.base import Model

    turns = 40

    class Brief(Model):
        """Offline model: a short reply that depends on the conversation (EchoModel's grows with it)."""

        def update_config(self, **config):
            pass

        def get_config(self):
            return {"model_id": "gpt-4o-mini"}

        async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
            return {"role": "assistant", "content": f"noted {len(messages)}", "stop_reason": "end_turn"}

        async def get_json(self, *args, **kwargs):
            raise NotImplementedError

    class Driver(Node):
        async def process(self, context):
            turn = await context.graph_state.get("turn", 0) + 1
            await context.graph_state.set("turn", turn)
            return {"text": f"turn {turn}: " + "words " * 20, "more": turn <= turns}

    driver = Driver(id="driver")
    agent = Agent(AgentConfig(model=Brief(), name="echo", prompt_template="{{ text }}",
                              memory_config=MemoryConfig(window=1000)))  # keep the whole conversation
    driver.on(more=True) >> agent
    agent >> driver
    graph = checkpointed(Graph(start=driver), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "a.db")),
                         graph_id="chat")
    asyncio.run(graph.run({}))
    headers = graph.list_checkpoints()
    stored = [graph._decode(graph.backend.get(h.checkpoint_id).blob, h) for h in headers]
    extras_bytes = sum(len(orjson.dumps(r.node_extras)) for r in stored)
    final_state_bytes = len(orjson.dumps(graph.get_last_checkpoint().node_extras["echo"]))
    assert len(graph.get_last_checkpoint().node_extras["echo"]["memory"]["messages"]) == 2 * turns
    assert extras_bytes < 4 * final_state_bytes  # a full state per checkpoint would be ~turns/2 times it
    middle = graph.get_checkpoint(offset=len(headers) // 2)
    visits = sum(1 for v in middle.execution_history if v.node_key == "echo")
    assert len(middle.node_extras["echo"]["memory"]["messages"]) == 2 * visits
