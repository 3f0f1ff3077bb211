"""Graphs for tests/test_chaos.py, importable by module path (the crash matrix's children import them).

``fan_in``: split -> (left, right) in one superstep -> join (a fan-in node with two parents, so the join
runs once per parent) -> total; every node writes graph state. ``unseeded``: a node draws an unseeded
random number into the result and state, so no two runs end alike (a crash matrix must say so).
"""

from __future__ import annotations

import random

from spark.graphs import Graph
from spark.nodes import Node


class Split(Node):
    async def process(self, context):
        value = context.inputs.content.get("value", 1)
        await context.graph_state.set("split", value)
        return {"value": value}


class Branch(Node):
    async def process(self, context):
        value = context.inputs.content["value"] * {"left": 2, "right": 3}[self.id]
        await context.graph_state.set(self.id, value)
        return {"value": value, "from": self.id}


class Join(Node):
    async def process(self, context):
        seen = await context.graph_state.get("joined", [])
        joined = sorted(seen + [context.inputs.content["from"]])
        await context.graph_state.set("joined", joined)
        return {"joined": joined, "value": context.inputs.content["value"]}


class Total(Node):
    async def process(self, context):
        total = await context.graph_state.get("total", 0) + context.inputs.content["value"]
        await context.graph_state.set("total", total)
        return {"total": total, "joined": context.inputs.content["joined"]}


def fan_in() -> Graph:
    split, left, right = Split(id="split"), Branch(id="left"), Branch(id="right")
    join, total = Join(id="join"), Total(id="total")
    split >> left
    split >> right
    left >> join
    right >> join
    join >> total
    return Graph(start=split, initial_state={"total": 0})


class Roll(Node):
    async def process(self, context):
        roll = random.random()
        await context.graph_state.set("roll", roll)
        return {"roll": roll}


class Keep(Node):
    async def process(self, context):
        await context.graph_state.set("kept", True)
        return {"roll": context.inputs.content["roll"]}


def unseeded() -> Graph:
    roll, keep = Roll(id="roll"), Keep(id="keep")
    roll >> keep
    return Graph(start=roll)
