"""Graphs for the orphan-recovery tests, built alike in the test process and in worker processes.

``build(graph_id)`` serves the graph ids ``orphan-<letter>``: a chain of four ``graphs.Step`` nodes whose
ids start with that letter (``a0`` .. ``a3``), so one calls file tells the visits of several executions
apart. The node named by ``SPARK_CKPT_TEST_HOLD`` waits inside its visit until the file
``SPARK_CKPT_TEST_GATE`` exists. The store is ``SPARK_CKPT_STORE``; ``SPARK_CKPT_TEST_LEASE_TTL`` sets the
lease lifetime. ``SPARK_CKPT_TEST_BROKEN`` names a graph id the factory fails for.
"""

from __future__ import annotations

import asyncio
import os

import graphs
from spark.graphs import Graph

from spark_ckpt import CheckpointConfig, checkpointed

INPUT = {"n": 1}


class HeldStep(graphs.Step):
    """A chain step; the one ``SPARK_CKPT_TEST_HOLD`` names waits, after its work, for the gate file."""

    async def process(self, context):
        result = await super().process(context)
        if os.environ.get("SPARK_CKPT_TEST_HOLD") == self.id:
            while not os.path.exists(os.environ["SPARK_CKPT_TEST_GATE"]):
                await asyncio.sleep(0.05)
        return result


def chain(letter: str) -> Graph:
    nodes = [HeldStep(id=f"{letter}{i}") for i in range(4)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


def config() -> CheckpointConfig:
    return CheckpointConfig(backend=os.environ["SPARK_CKPT_STORE"], strategy="iteration", interval=1,
                            lease_ttl_s=float(os.environ.get("SPARK_CKPT_TEST_LEASE_TTL", "60")))


def build(graph_id: str):
    if not graph_id.startswith("orphan-"):
        return None
    if graph_id == os.environ.get("SPARK_CKPT_TEST_BROKEN"):
        raise RuntimeError(f"cannot build {graph_id}")
    return checkpointed(chain(graph_id.split("-", 1)[1]), config=config(), graph_id=graph_id)
