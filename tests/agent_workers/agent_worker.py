"""A worker process for the agent SIGKILL tests.

    python agent_worker.py run|recover <db path> <task> [parallel] [unsafe]

``run`` starts a checkpointed run of ``task``; ``recover`` finishes the interrupted one. The kill point
comes from ``SPARK_CKPT_TEST_KILL`` (see ``scripted.maybe_kill``); the outcome is printed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent_workers.scripted import ScriptedModel, charge, maybe_kill, step  # noqa: E402
from spark_ckpt import hookimpl  # noqa: E402


class KillPlugin:
    """Kills the process right after an LLM response was journaled, or just before an LLM call."""

    llm_done = 0
    llm_started = 0

    @hookimpl
    def spark_ckpt_pre_agent_call(self, event):
        if event.method == "get_text":
            self.llm_started += 1
            maybe_kill("before_llm", self.llm_started)

    @hookimpl
    def spark_ckpt_post_agent_call(self, event):
        if event.method == "get_text":
            self.llm_done += 1
            maybe_kill("after_llm", self.llm_done)


async def main() -> None:
    mode, db, task = sys.argv[1], sys.argv[2], sys.argv[3]
    parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    unsafe = len(sys.argv) > 5 and sys.argv[5] == "unsafe"

    from spark.agents import Agent, AgentConfig

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark_ckpt.plugins import get_plugin_manager

    get_plugin_manager().register(KillPlugin(), name="kill")
    tool_name = "charge" if unsafe else "step"
    config = AgentConfig(
        model=ScriptedModel(parallel=parallel, tool_name=tool_name), name="bot", tools=[step, charge],
        parallel_tool_execution=parallel > 1,
    )
    agent = checkpointed(
        Agent(config), config=CheckpointConfig(backend="sqlite", path=db, lease_ttl_s=0.5), agent_id="bot",
        unsafe_tools={"charge"},
    )
    if mode.startswith("graph"):
        await graph_main(mode, db, task, config, unsafe, allow=len(sys.argv) > 6 and sys.argv[6] == "allow")
        return
    if mode == "run":
        result = await agent.run(task)
    else:
        allow = len(sys.argv) > 6 and sys.argv[6] == "allow"
        try:
            result = await agent.recover_and_continue(wait=True, allow_unsafe_rerun=allow)
        except Exception as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            return
    snapshot = agent.checkpoint()
    print(json.dumps({
        "result": result.content,
        "messages": snapshot["memory"]["messages"],
        "costs": [[c["model_id"], c["input_tokens"], c["output_tokens"]] for c in snapshot["cost_tracking"]["calls"]],
        "tool_outputs": [t["output"] for t in snapshot["state"]["tool_traces"]],
        "replayed": agent.last_session.replayed,
    }))


async def graph_main(mode: str, db: str, task: str, agent_config, unsafe: bool = False, allow: bool = False) -> None:
    """The same agent as a node of a checkpointed graph: prepare >> agent."""
    from spark.agents import Agent
    from spark.graphs import Graph
    from spark.nodes import Node

    from spark_ckpt import CheckpointConfig, checkpointed, not_safe_to_rerun

    if unsafe:
        not_safe_to_rerun(charge)

    class Prepare(Node):
        async def process(self, context):
            return {"text": context.inputs.content}

    prepare = Prepare(name="prepare")
    agent = Agent(agent_config.model_copy(update={"prompt_template": "{{ text }}"}))
    prepare >> agent
    agent_first = mode.startswith("graph-start")  # the agent is the start node: its calls run in superstep 0
    graph = checkpointed(
        Graph(start=agent if agent_first else prepare),
        config=CheckpointConfig(backend="sqlite", path=db, lease_ttl_s=0.5), graph_id="g",
    )
    if mode in ("graph-run", "graph-start-run"):
        result = await graph.run({"text": task} if agent_first else task)
    else:
        try:
            result = await graph.recover_and_continue(allow_unsafe_rerun=allow)
        except Exception as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            return
    from spark_ckpt.adapters.agent_snapshot import take_snapshot

    snapshot = take_snapshot(agent, None)
    print(json.dumps({
        "result": result.content,
        "messages": snapshot["memory"]["messages"],
        "costs": [[c["model_id"], c["input_tokens"], c["output_tokens"]] for c in snapshot["cost_tracking"]["calls"]],
        "tool_outputs": [t["output"] for t in snapshot["state"]["tool_traces"]],
    }))


if __name__ == "__main__":
    asyncio.run(main())
