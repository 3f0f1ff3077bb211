"""Spark graphs with ``SubgraphNode``s for the subgraph tests, built the same way in the test process
and in the crash worker (``subgraph_worker.py``).

Every node records its executions and may SIGKILL its process on cue, as in ``graphs.py``
(``SPARK_CKPT_TEST_CALLS``, ``SPARK_CKPT_TEST_CRASH="<node id>:<visit>"``); node ids are unique
across the outer and inner graphs, so the calls file counts inner executions too.
"""

from __future__ import annotations

import os

from spark.graphs import Graph
from spark.graphs.graph import SubgraphNode
from spark.nodes import Node

from graphs import Step, maybe_crash, record

#: passes of the inner loop
PASSES = 4


class Loop(Node):
    """Inner self-loop: one pass per superstep, appending to graph state (shared with the outer graph
    unless ``share_state=False``); ``SPARK_CKPT_TEST_FAIL="loop:<visit>"`` makes that visit raise."""

    async def process(self, context):
        visit = record(self, context)
        i = (context.inputs.content or {}).get("i", 0)
        acc = await context.graph_state.get("acc", [])
        await context.graph_state.set("acc", acc + [i * 10])
        maybe_crash(self, visit)
        if os.environ.get("SPARK_CKPT_TEST_FAIL") == f"{self.id}:{visit}":
            raise RuntimeError(f"injected failure in {self.id}")
        return {"i": i + 1, "done": i + 1 >= PASSES}


class Tail(Node):
    async def process(self, context):
        visit = record(self, context)
        total = sum(await context.graph_state.get("acc", []))
        await context.graph_state.set("tail", total)
        maybe_crash(self, visit)
        return {"total": total}


class Post(Node):
    async def process(self, context):
        visit = record(self, context)
        await context.graph_state.set(f"final_{self.id}", context.inputs.content)
        maybe_crash(self, visit)
        return {"final": context.inputs.content}


def inner() -> Graph:
    """loop (self-loop, ``PASSES`` supersteps) -> tail."""
    loop, tail = Loop(id="loop"), Tail(id="tail")
    loop.on(done=False) >> loop
    loop.on(done=True) >> tail
    return Graph(start=loop)


def around(sub: Node) -> Graph:
    """pre -> sub -> post."""
    pre, post = Step(id="pre"), Post(id="post")
    pre >> sub
    sub >> post
    return Graph(start=pre)


def sub() -> Graph:
    return around(SubgraphNode(id="sub", graph=inner()))


def sub_factory() -> Graph:
    return around(SubgraphNode(id="sub", graph_factory=inner))


def sub_isolated() -> Graph:
    return around(SubgraphNode(id="sub", graph=inner(), share_state=False))


def sub_checkpointed() -> Graph:
    from spark_ckpt import CheckpointConfig, checkpointed

    template = checkpointed(inner(), config=CheckpointConfig(backend="memory://subgraph-template"), graph_id="inner")
    return around(SubgraphNode(id="sub", graph=template))


def sub_siblings() -> Graph:
    """pre -> (sub, side) in one superstep, sharing graph state; sub -> post."""
    pre, side, post = Step(id="pre"), Step(id="side"), Post(id="post")
    sub = SubgraphNode(id="sub", graph=inner())
    pre >> sub
    pre >> side
    sub >> post
    return Graph(start=pre)


def sub_nested() -> Graph:
    """pre -> outer_sub [m0 -> inner_sub [loop -> tail] -> m1] -> post."""
    m0, m1 = Step(id="m0"), Step(id="m1")
    inner_sub = SubgraphNode(id="inner_sub", graph=inner())
    m0 >> inner_sub
    inner_sub >> m1
    return around(SubgraphNode(id="outer_sub", graph=Graph(start=m0)))


BUILDERS = {f.__name__: f for f in (sub, sub_factory, sub_isolated, sub_checkpointed, sub_siblings, sub_nested)}


def build(name: str) -> Graph:
    return BUILDERS[name]()
