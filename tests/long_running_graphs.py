"""Long-running (actor-style) Spark graphs for the tests, built alike in the test process and in workers.

``stream``: ``source`` feeds itself a stream of N messages through a self-loop edge and hands each
item to ``doubler``, which hands it to ``counter`` (the end node). Each node records every real
processing as ``"<node>:<item>"`` in the file named by ``SPARK_CKPT_TEST_CALLS`` (fsynced, so a
SIGKILLed process leaves it complete), sleeps a little so the three workers overlap, and changes
graph state through its API; ``counter`` also keeps a count in its node state.
``SPARK_CKPT_TEST_CRASH="<node>:<item>"`` makes that processing SIGKILL its process after it changed
graph state (its commit never happens).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from graphs import append_call
from spark.graphs import Graph
from spark.nodes import Node


def record(node: Node, item: Any) -> None:
    append_call(f"{node.id}:{item}")


def maybe_crash(node: Node, item: Any) -> None:
    if os.environ.get("SPARK_CKPT_TEST_CRASH") == f"{node.id}:{item}":
        os.kill(os.getpid(), signal.SIGKILL)


class Source(Node):
    async def process(self, context):
        i, n = context.inputs.content["i"], context.inputs.content["n"]
        record(self, i)
        await asyncio.sleep(0.005)
        await context.graph_state.set("fed", i + 1)
        maybe_crash(self, i)
        return {"i": i + 1, "n": n, "item": i, "more": i + 1 < n}


class Doubler(Node):
    async def process(self, context):
        item = context.inputs.content["item"]
        record(self, item)
        await asyncio.sleep(0.01)
        doubled = await context.graph_state.get("doubled", [])
        await context.graph_state.set("doubled", doubled + [item * 2])
        maybe_crash(self, item)
        return {"item": item, "value": item * 2}


class Counter(Node):
    async def process(self, context):
        item, value = context.inputs.content["item"], context.inputs.content["value"]
        record(self, item)
        await asyncio.sleep(0.003)
        count = await context.graph_state.get("count", 0)
        await context.graph_state.update({"count": count + 1, "total": await context.graph_state.get("total", 0) + value})
        context.state["seen"] = context.state.get("seen", 0) + 1
        maybe_crash(self, item)
        return {"count": count + 1, "item": item}


def build(name: str = "stream") -> Graph:
    if name != "stream":
        raise ValueError(name)
    source, doubler, counter = Source(id="source"), Doubler(id="doubler"), Counter(id="counter")
    source.on(more=True) >> source
    source >> doubler
    doubler >> counter
    return Graph(start=source, end=counter, idle_timeout=0.3)


def task(n: int) -> Any:
    from spark.graphs.tasks import Task, TaskType
    from spark.nodes.types import NodeMessage

    return Task(inputs=NodeMessage(content={"i": 0, "n": n}), type=TaskType.LONG_RUNNING)
