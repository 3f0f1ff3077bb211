"""A worker for the faithful-value crash tests: a two-node graph carries the values it was given
through its run input, graph state and node outputs; ``run`` SIGKILLs itself in the second node
(after the first node's checkpoint), ``recover`` continues the run and pickles what came back.

    python tests/value_worker.py run|recover STORE_URL VALUES.pickle OUT.pickle
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import value_types  # noqa: E402
from crash_cues import die  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


def build(mode: str):
    from spark.graphs import Graph
    from spark.nodes import Node

    class Put(Node):
        async def process(self, context):
            values = context.inputs.content["values"]
            await context.graph_state.set("values", values)
            return {"values": values}

    class Hold(Node):
        async def process(self, context):
            if mode == "run":
                die()  # the first node's checkpoint is stored: recovery replays it
            values = context.inputs.content["values"]
            await context.graph_state.set("echo", values)
            return {"values": values}

    put = Put(id="put")
    put >> Hold(id="hold")
    return Graph(start=put)


async def main() -> None:
    mode, store, values_path, out_path = sys.argv[1:5]
    config = CheckpointConfig(backend=store, allowed_types=value_types.ALLOWED)
    graph = checkpointed(build(mode), config=config, graph_id="values")
    if mode == "run":
        with open(values_path, "rb") as f:
            await graph.run({"values": pickle.load(f)})
        return
    result = await graph.recover_and_continue()
    state = graph.get_state_snapshot()
    with open(out_path, "wb") as f:
        pickle.dump({"state": {"values": state["values"], "echo": state["echo"]},
                     "result": result.content["values"]}, f)


if __name__ == "__main__":
    asyncio.run(main())
