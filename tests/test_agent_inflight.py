"""An agent node's calls within one graph visit are journaled per call: the bytes stored grow with
the number of calls, not with its square."""

from __future__ import annotations

import asyncio

import orjson
from agent_workers.scripted import ScriptedModel, charge, step

from spark_ckpt import CheckpointConfig, checkpointed


def _run_agent_graph(tmp_path, calls: int):
    from spark.agents import Agent, AgentConfig
    from spark.graphs import Graph
    from spark.nodes import Node

    class Prepare(Node):
        async def process(self, context):
            return {"text": context.inputs.content}

    prepare = Prepare(name="prepare")
    agent = Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step, charge], prompt_template="{{ text }}"))
    prepare >> agent
    graph = checkpointed(
        Graph(start=prepare), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / f"{calls}.db")),
        graph_id=f"long-{calls}",
    )
    asyncio.run(graph.run(f"task:{calls}"))
    return graph


def test_inflight_journal_is_stored_once_per_call_and_resolves_whole(tmp_path):
    """40 tool calls in one visit: every call persists the journal, yet all in-flight records together
    hold ~2x the final journal's bytes (whole journals per record would be ~60x), and the newest
    in-flight record resolves to the whole journal, call by call."""
    graph = _run_agent_graph(tmp_path, 40)
    stored, newest = 0, None
    for header in graph.list_checkpoints():  # newest first
        data, _ = graph.codec.decode_data(graph.backend.get(header.checkpoint_id).blob)
        if data.get("inflight"):  # (left out of a record when empty)
            stored += len(orjson.dumps(data["inflight"]))
            newest = newest or header
    whole = graph._load(newest.checkpoint_id).inflight["bot"]["data"]["agents"]["bot"]
    llm_calls = [c for c in whole if c["kind"] == "llm"]
    tool_results = [c["tool_result"] for c in whole if c["kind"] == "tool"]
    # 40 rounds of "LLM asks for a tool, the tool answers", then the LLM call that gives the answer
    assert len(llm_calls) == 41 and tool_results == [f"r{i}" for i in range(40)]
    assert stored < 3 * len(orjson.dumps(whole)), (stored, len(orjson.dumps(whole)))
