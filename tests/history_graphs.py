"""A looping graph for the state history tests, built the same way in the test process and in workers.

``tick`` loops ``n`` times (input ``{"n": n}``): each visit adds 1 to ``count``, appends to ``log`` (a
list that only grows), replaces ``last`` (a dict) and stops on ``stop_at`` if the state holds one;
then ``finish`` sets ``done`` and deletes ``scratch``. Every visit records the graph state as it left
it in ``SEEN`` (one visit per superstep, so that is the state at the superstep's boundary) and appends
``"<node>:<count>"`` to the file ``SPARK_CKPT_TEST_CALLS`` names. ``SPARK_CKPT_TEST_CRASH=tick:<count>``
SIGKILLs the process inside the visit that set ``count`` to that value.
"""

from __future__ import annotations

import copy
import os
import signal

from spark.graphs import Graph
from spark.nodes import Node

#: (node key, graph state after its visit), in visit order
SEEN: list[tuple[str, dict]] = []


def _note(node: Node, state: dict, label: str) -> None:
    SEEN.append((node.id, copy.deepcopy(state)))
    path = os.environ.get("SPARK_CKPT_TEST_CALLS")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{node.id}:{label}\n")
            fh.flush()
            os.fsync(fh.fileno())
    if os.environ.get("SPARK_CKPT_TEST_CRASH") == f"{node.id}:{label}":
        os.kill(os.getpid(), signal.SIGKILL)


class Tick(Node):
    async def process(self, context):
        n = context.inputs.content["n"]
        count = await context.graph_state.get("count", 0) + 1
        step = await context.graph_state.get("step", 1)
        await context.graph_state.set("count", count)
        await context.graph_state.set("total", await context.graph_state.get("total", 0) + step)
        await context.graph_state.set("log", (await context.graph_state.get("log", [])) + [count])
        await context.graph_state.set("last", {"count": count, "even": count % 2 == 0})
        _note(self, context.graph_state.get_snapshot(), str(count))
        stop_at = await context.graph_state.get("stop_at", n)
        return {"n": n, "done": count >= stop_at}


class Finish(Node):
    async def process(self, context):
        await context.graph_state.set("done", True)
        if await context.graph_state.get("scratch", None) is not None:
            await context.graph_state.delete("scratch")
        total = await context.graph_state.get("total")
        _note(self, context.graph_state.get_snapshot(), "end")
        return {"total": total, "count": await context.graph_state.get("count")}


INITIAL = {"scratch": "x", "count": 0, "total": 0, "log": []}


def looping(initial_state: dict | None = None) -> Graph:
    """tick (self-loop, ``n`` times) -> finish; ``initial_state``: what a bare run starts from."""
    tick, finish = Tick(id="tick"), Finish(id="finish")
    tick.on(done=False) >> tick
    tick.on(done=True) >> finish
    return Graph(start=tick, initial_state=copy.deepcopy(INITIAL if initial_state is None else initial_state))
