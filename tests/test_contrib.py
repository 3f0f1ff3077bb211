"""The contrib examples work as plugins (they are examples, but examples that run)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed, plugins

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"contrib_{name}", CONTRIB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Work(Node):
    async def process(self, context):
        i = context.inputs.content.get("i", 0) + 1
        if i == 3:
            await asyncio.sleep(0.2)  # the one expensive visit
        return {"i": i, "more": i < 6}


def test_cost_aware_policy_checkpoints_only_after_expensive_work(tmp_path) -> None:
    module = load("cost_aware_policy")
    plugins.register(module)
    try:
        node = Work(id="work")
        node.on(more=True) >> node
        graph = checkpointed(Graph(start=node), config=CheckpointConfig(
            backend="sqlite", path=str(tmp_path / "c.db"), strategy="cost-aware", interval=0.3), graph_id="cost")
        asyncio.run(graph.run({"i": 0}))
        history_sizes = sorted(len(graph.get_checkpoint(offset=i).execution_history)
                               for i in range(len(graph.list_checkpoints())))
        # start record, the checkpoint right after the slow 3rd visit, and the final one
        assert history_sizes == [0, 3, 6]
    finally:
        plugins.unregister(module)
