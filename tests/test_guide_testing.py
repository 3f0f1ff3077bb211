"""The guide's "Testing Recovery" tests, ported: its two unit tests with import changes only (the graph
built by Spark, then wrapped with ``checkpointed()``; the agent is spark-ckpt's ``CheckpointedAgent``),
and its chaos test on ``run_with_chaos`` (recovery from the journal, not restore-and-rerun)."""

from __future__ import annotations

import pytest
from spark.agents import AgentConfig
from spark.agents import Agent as SparkAgent
from spark.graphs import Graph as SparkGraph
from spark.nodes import Node

from spark_ckpt import CheckpointedAgent, checkpointed
from spark_ckpt.testing.chaos import run_with_chaos


class StatefulNode(Node):
    async def process(self, context):
        counter = await context.graph_state.get("counter", 0)
        await context.graph_state.set("counter", counter + 1)
        return {"counter": counter + 1, "data": context.inputs.content.get("data")}


@pytest.fixture
def Graph(ckpt_config):
    """The guide's ``Graph(...)``: Spark's graph, wrapped with ``checkpointed()`` on a temporary store."""
    def build(**kwargs):
        return checkpointed(SparkGraph(**kwargs), config=ckpt_config, graph_id="guide-graph")

    return build


@pytest.fixture
def stateful_node():
    return StatefulNode(id="stateful")


@pytest.fixture
def Agent(ckpt_config):
    """The guide's ``Agent``: ``Agent(config=...)`` and ``Agent.restore(checkpoint, config)``."""
    class Agent:
        def __new__(cls, config):
            return checkpointed(SparkAgent(config=config), config=ckpt_config, agent_id="guide-agent")

        restore = staticmethod(CheckpointedAgent.restore)

    return Agent


@pytest.fixture
def config(scripted_model):
    return AgentConfig(model=scripted_model(["Response"]), name="guide-agent")


# -- "Unit Testing Checkpoints", as the guide writes them ---------------------------------------------
@pytest.mark.asyncio
async def test_graph_checkpoint_restore(Graph, stateful_node):
    """Test graph checkpoint and restore."""

    # Create graph with state
    graph = Graph(
        start=stateful_node,
        enable_graph_state=True,
        initial_state={'counter': 0}
    )

    # Run a few iterations
    for i in range(5):
        await graph.run({'data': i})

    # Get state
    counter = graph.get_state_snapshot()['counter']
    assert counter == 5

    # Create checkpoint
    checkpoint = graph.create_checkpoint()

    # Continue execution
    for i in range(5, 10):
        await graph.run({'data': i})

    assert graph.get_state_snapshot()['counter'] == 10

    # Restore from checkpoint
    graph.restore_from_checkpoint(checkpoint)

    # State should be back to checkpoint
    assert graph.get_state_snapshot()['counter'] == 5


@pytest.mark.asyncio
async def test_agent_checkpoint_restore(Agent, config):
    """Test agent checkpoint and restore."""

    agent = Agent(config=config)

    # Have conversation
    agent.add_message_to_history({'role': 'user', 'content': 'Test'})
    assert len(agent.messages) == 1

    # Checkpoint
    checkpoint = agent.checkpoint()

    # Continue conversation
    agent.add_message_to_history({'role': 'assistant', 'content': 'Response'})
    assert len(agent.messages) == 2

    # Restore
    agent2 = Agent.restore(checkpoint, config)

    # Should have state from checkpoint
    assert len(agent2.messages) == 1


# -- "Chaos Testing" ---------------------------------------------------------------------------------
def counting_graph() -> SparkGraph:
    """s0 -> s1 -> ... -> s4: five stateful visits, each adding one to the counter."""
    nodes = [StatefulNode(id=f"s{i}") for i in range(5)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return SparkGraph(start=nodes[0], initial_state={"counter": 0})


@pytest.mark.asyncio
async def test_chaos_run_recovers_to_the_uninterrupted_result(ckpt_config):
    """The guide's ChaosTestingGraph(graph, failure_rate=0.3).run_with_chaos(inputs), done by recovery:
    every injected failure is followed by recover_and_continue(), which replays the completed visits."""
    reference = await checkpointed(counting_graph(), config=ckpt_config, graph_id="reference").run({"data": 1})

    graph = checkpointed(counting_graph(), config=ckpt_config, graph_id="chaos")
    run = await run_with_chaos(graph, {"data": 1}, failure_rate=0.3, seed=4)

    assert reference.content == {"counter": 5, "data": 1}
    assert run.result.content == reference.content
    assert graph.get_state_snapshot() == {"counter": 5}
    assert run.failures >= 1 and run.attempts == run.failures + 1
    # each recovery replayed what had completed before the failure instead of running it again
    assert all(report.replayed for report in run.recoveries[1:])
