"""A graph looping one node a given number of times, for the journal-length tests (and their
worker processes): each visit counts ``n`` up in graph state and returns it; ``stall_at`` makes the
visit that reaches it write ``marker`` and block until the process is killed."""

from __future__ import annotations

import time
from pathlib import Path

from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed


class Count(Node):
    steps = 0
    stall_at: int | None = None
    marker: Path | None = None

    async def process(self, context):
        n = await context.graph_state.get("n", 0) + 1
        await context.graph_state.set("n", n)
        if n == Count.stall_at and Count.marker is not None:
            Count.marker.write_text(str(n))
            time.sleep(3600)
        return {"n": n, "done": n >= Count.steps}


def build(path: Path, steps: int, **config):
    Count.steps = steps
    node = Count(id="count")
    node.on(done=False) >> node
    config.setdefault("retention_count", None)
    return checkpointed(Graph(start=node), config=CheckpointConfig(
        backend="sqlite", path=str(path), strategy="iteration", interval=1, **config), graph_id="journal-loop")
