"""The guide's "Chaos Testing" on ``spark_ckpt.testing.chaos.run_with_chaos``: recovery from the journal,
not restore-and-rerun. (Its two unit tests, and its ChaosTestingGraph class as written, are in
test_guide_port.py with the rest of the guide.)"""

from __future__ import annotations

import pytest
from spark.graphs import Graph as SparkGraph
from spark.nodes import Node

from spark_ckpt import checkpointed
from spark_ckpt.testing.chaos import run_with_chaos


class StatefulNode(Node):
    async def process(self, context):
        counter = await context.graph_state.get("counter", 0)
        await context.graph_state.set("counter", counter + 1)
        return {"counter": counter + 1, "data": context.inputs.content.get("data")}


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
