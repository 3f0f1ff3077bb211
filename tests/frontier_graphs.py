"""Graphs for the frontier-recovery tests (and their worker processes).

``branching``: ``count`` counts ``n`` up in graph state; on an even ``n`` it goes to ``left``, on an
odd one to ``right``; both go to ``merge`` (two parents: its inputs carry their origin), which goes
back to ``count`` until ``n`` reaches ``steps``. ``left`` appends to a list in graph state, ``right``
keeps a counter in its own node state and reads its own last output; ``merge`` reads its input. One
node runs per superstep, three supersteps per count. ``stall_at`` makes the visit of ``count`` that
reaches it write ``marker`` and block until the process is killed; ``fail_at`` makes it raise (or
the visit of ``fail_in`` at that count).

``fan_out``: ``count`` goes to ``left`` and ``right`` at once, so two nodes wait at most boundaries.
``editing``: a node editing the message it was handed, which is its parent's output object;
``editing_twice``: the same object handed twice (two edges).
"""

from __future__ import annotations

import time
from pathlib import Path

from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed


class Settings:
    steps = 0
    stall_at: int | None = None
    fail_at: int | None = None
    fail_in = "count"  # the node whose visit at count ``fail_at`` raises
    marker: Path | None = None


def fail(node: str, n: int) -> None:
    if n == Settings.fail_at and node == Settings.fail_in:
        Settings.fail_at = None
        raise RuntimeError(f"failing at count {n}")


class Count(Node):
    async def process(self, context):
        n = await context.graph_state.get("n", 0) + 1
        await context.graph_state.set("n", n)
        if n == Settings.stall_at and Settings.marker is not None:
            Settings.marker.write_text(str(n))
            time.sleep(3600)
        fail("count", n)
        return {"n": n, "even": n % 2 == 0, "done": n >= Settings.steps}


class Left(Node):
    async def process(self, context):
        fail("left", context.inputs.content["n"])
        trail = await context.graph_state.get("trail", [])
        await context.graph_state.set("trail", trail + [context.inputs.content["n"]])
        return {"via": "left", "n": context.inputs.content["n"]}


class Right(Node):
    async def process(self, context):
        self._state["calls"] = self._state.get("calls", 0) + 1
        previous = self.outputs.content if self.outputs is not None else None
        before = previous.get("n") if isinstance(previous, dict) else None
        await context.graph_state.set("right_last", context.inputs.content["n"])
        return {"via": "right", "n": context.inputs.content["n"], "before": before, "calls": self._state["calls"]}


class Merge(Node):
    async def process(self, context):
        seen = await context.graph_state.get("seen", 0)
        await context.graph_state.set("seen", seen + 1)
        return {"from": context.inputs.content["via"], "n": context.inputs.content["n"]}


def branching_graph() -> Graph:
    count, left, right, merge = Count(id="count"), Left(id="left"), Right(id="right"), Merge(id="merge")
    count.on(done=False, even=True) >> left
    count.on(done=False, even=False) >> right
    left >> merge
    right >> merge
    merge >> count
    return Graph(start=count)


def fan_out_graph() -> Graph:
    count, left, right, merge = Count(id="count"), Left(id="left"), Right(id="right"), Merge(id="merge")
    count.on(done=False) >> left
    count.on(done=False) >> right
    left >> merge
    right >> merge
    merge.on(**{"from": "left"}) >> count  # merge runs once per branch; one of them goes on
    return Graph(start=count)


class Produce(Node):
    async def process(self, context):
        n = await context.graph_state.get("n", 0) + 1
        await context.graph_state.set("n", n)
        fail("produce", n)
        previous = self.outputs.content if self.outputs is not None else None
        return {"n": n, "seen_tag": previous.get("tag") if isinstance(previous, dict) else None,
                "done": n >= Settings.steps}


class Tag(Node):
    async def process(self, context):
        message = context.inputs.content
        fail("tag", message["n"])
        message["tag"] = f"tagged {message['n']}"  # edits the message it was handed: its parent's output
        return {"n": message["n"], "done": message["done"]}


def editing_graph() -> Graph:
    """``produce`` -> ``tag`` -> ``produce``: ``tag`` edits its input in place (Spark hands it
    ``produce``'s output object itself), and ``produce`` reads that edit in its own last output."""
    produce, tag = Produce(id="produce"), Tag(id="tag")
    produce >> tag
    tag.on(done=False) >> produce
    return Graph(start=produce)


class TagTwice(Node):
    async def process(self, context):
        message = context.inputs.content
        fail("tag", message["n"])
        again = "tag" in message  # the second delivery of the same object sees the first one's edit
        message["tag"] = f"tagged {message['n']}"
        return {"n": message["n"], "done": message["done"], "again": again}


def editing_twice_graph() -> Graph:
    """``produce`` delivers its output object to ``tag`` twice (two edges): ``tag``'s second visit
    sees the edit its first made, and only then goes back to ``produce``."""
    produce, tag = Produce(id="produce"), TagTwice(id="tag")
    produce >> tag
    produce.on(done=False) >> tag
    tag.on(again=True, done=False) >> produce
    return Graph(start=produce)


GRAPHS = {"branching": branching_graph, "fan_out": fan_out_graph, "editing": editing_graph,
          "editing_twice": editing_twice_graph}


def build(store: Path | str, steps: int, shape: str = "branching", **config):
    """The graph checkpointed to ``store``: a SQLite file, or a ``postgresql://`` URL."""
    Settings.steps = steps
    config.setdefault("retention_count", None)
    config.setdefault("interval", 1)
    backend = "database" if str(store).startswith("postgresql://") else "sqlite"
    return checkpointed(GRAPHS[shape](), config=CheckpointConfig(
        backend=backend, path=str(store), strategy="iteration", **config), graph_id=f"frontier-{shape}")
