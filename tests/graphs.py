"""Spark graphs used by the tests, built the same way in the test process and in crash workers.

Every node appends ``"<key>:<visit>"`` to ``CALLS`` (and to the file named by the environment
variable ``SPARK_CKPT_TEST_CALLS``, so a parent process can count real executions across
processes). ``SPARK_CKPT_TEST_CRASH="<node key>:<visit index>"`` makes that visit SIGKILL its own
process from inside ``process()``, after it changed graph state.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from spark.graphs import Graph
from spark.nodes import Node

CALLS: list[str] = []


def record(node: Node, context: Any) -> int:
    """Record one real execution; return the node's visit number (0-based) in this process."""
    visit = context.state.get("visits", 0)
    context.state["visits"] = visit + 1
    entry = f"{node.id}:{visit}"
    CALLS.append(entry)
    append_call(entry)
    return visit


def append_call(entry: str) -> None:
    """Append ``entry`` durably to the calls file ``SPARK_CKPT_TEST_CALLS`` names (if any), so a parent
    process counts real executions across the processes it started, also one killed right after."""
    path = os.environ.get("SPARK_CKPT_TEST_CALLS")
    if path:
        with open(path, "a") as fh:
            fh.write(entry + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def maybe_crash(node: Node, visit: int) -> None:
    if os.environ.get("SPARK_CKPT_TEST_CRASH") == f"{node.id}:{visit}":
        os.kill(os.getpid(), signal.SIGKILL)


class Fetch(Node):
    async def process(self, context):
        visit = record(self, context)
        await context.graph_state.set("items", [])
        maybe_crash(self, visit)
        return {"batch": list(range(1, context.inputs.content.get("n", 5) + 1)), "i": 0}


class Transform(Node):
    """Self-loop: one item of the batch per pass, accumulating into graph state."""

    async def process(self, context):
        visit = record(self, context)
        batch, i = context.inputs.content["batch"], context.inputs.content["i"]
        items = await context.graph_state.get("items", [])
        await context.graph_state.set("items", items + [batch[i] * 10])
        maybe_crash(self, visit)
        done = i + 1 >= len(batch)
        return {"batch": batch, "i": i + 1, "done": done, "flagged": sum(batch) % 2 == 1}


class Review(Node):
    async def process(self, context):
        visit = record(self, context)
        await context.graph_state.set("reviewed", True)
        maybe_crash(self, visit)
        return {"status": "reviewed", "total": sum(await context.graph_state.get("items"))}


class Publish(Node):
    async def process(self, context):
        visit = record(self, context)
        await context.graph_state.set("published", True)
        maybe_crash(self, visit)
        return {"status": "published", "total": sum(await context.graph_state.get("items"))}


class Report(Node):
    async def process(self, context):
        visit = record(self, context)
        maybe_crash(self, visit)
        status = context.inputs.content["status"]
        await context.graph_state.set("report", f"{status}:{context.inputs.content['total']}")
        return {"report": await context.graph_state.get("report")}


def pipeline() -> Graph:
    """fetch -> transform (self-loop over the batch) -> review | publish (conditional) -> report."""
    fetch, transform = Fetch(id="fetch"), Transform(id="transform")
    review, publish, report = Review(id="review"), Publish(id="publish"), Report(id="report")
    fetch >> transform
    transform.on(done=False) >> transform
    transform.on(done=True, flagged=True) >> review
    transform.on(done=True, flagged=False) >> publish
    review >> report
    publish >> report
    return Graph(start=fetch, initial_state={"items": []})


class Step(Node):
    async def process(self, context):
        visit = record(self, context)
        count = await context.graph_state.get("count", 0)
        await context.graph_state.set("count", count + 1)
        await context.graph_state.set(f"seen_{self.id}", visit)
        maybe_crash(self, visit)
        if os.environ.get("SPARK_CKPT_TEST_FAIL") == f"{self.id}:{visit}":
            raise RuntimeError(f"injected failure in {self.id}")
        return {"step": self.id, "count": count + 1}


def chain(n: int = 4) -> Graph:
    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


class Split(Node):
    async def process(self, context):
        record(self, context)
        await context.graph_state.set("split", True)
        return {"value": context.inputs.content.get("value", 1)}


class Branch(Node):
    async def process(self, context):
        visit = record(self, context)
        maybe_crash(self, visit)
        factor = {"left": 2, "right": 3}[self.id]
        await context.graph_state.set(self.id, context.inputs.content["value"] * factor)
        return {"value": context.inputs.content["value"] * factor, "from": self.id}


class Join(Node):
    async def process(self, context):
        record(self, context)
        seen = await context.graph_state.get("joined", [])
        await context.graph_state.set("joined", sorted(seen + [context.inputs.content["from"]]))
        return {"joined": await context.graph_state.get("joined")}


def fan_out() -> Graph:
    """split -> (left, right) in one superstep -> join (runs once per parent: Spark semantics)."""
    split, left, right, join = Split(id="split"), Branch(id="left"), Branch(id="right"), Join(id="join")
    split >> left
    split >> right
    left >> join
    right >> join
    return Graph(start=split)


class Mutate(Node):
    """Changes graph state in every way a node can: a list changed in place without set(), a dict
    changed and set() again as the same object, a key deleted, a value replaced by an equal one of
    another type (1 == True, but they are stored differently)."""

    async def process(self, context):
        visit = record(self, context)
        step = (context.inputs.content or {}).get("step", 0)
        (await context.graph_state.get("log")).append(step)
        tags = await context.graph_state.get("tags")
        tags["last"] = step
        await context.graph_state.set("tags", tags)
        if step == 1:
            await context.graph_state.delete("scratch")
        if step < 4:  # the last visit leaves it as the one before stored it
            await context.graph_state.set("flag", 1 if step % 2 == 0 else True)
        maybe_crash(self, visit)
        if os.environ.get("SPARK_CKPT_TEST_FAIL") == f"{self.id}:{visit}":
            raise RuntimeError(f"injected failure in {self.id}")
        return {"step": step + 1, "done": step + 1 >= 5}


def mutating() -> Graph:
    """One node looping five times over state that also holds a large value no visit changes."""
    mutate = Mutate(id="mutate")
    mutate.on(done=False) >> mutate
    return Graph(start=mutate, initial_state={"log": [], "tags": {}, "scratch": 0, "flag": 1, "blob": "z" * 50_000})


class Announce(Node):
    """Publishes an event per order on the graph's event bus (its subscribers run on event edges)."""

    async def process(self, context):
        visit = record(self, context)
        orders = list(range(1, context.inputs.content.get("n", 3) + 1))
        await context.graph_state.set("announced", orders)
        for order in orders:
            await self.publish_event("order", {"order": order})
        maybe_crash(self, visit)
        return {"orders": orders, "step": 0}


class Work(Node):
    """A plain step after the publisher; slow enough that the subscribers run meanwhile."""

    async def process(self, context):
        visit = record(self, context)
        await asyncio.sleep(0.02)
        steps = await context.graph_state.get("steps", [])
        await context.graph_state.set("steps", steps + [self.id])
        maybe_crash(self, visit)
        return {**context.inputs.content, "step": context.inputs.content.get("step", 0) + 1}


class Ship(Node):
    """Subscribed to "order" events: ships each order it is told about."""

    async def process(self, context):
        visit = record(self, context)
        shipped = await context.graph_state.get("shipped", [])
        await context.graph_state.set("shipped", sorted(shipped + [context.inputs.content["order"]]))
        maybe_crash(self, visit)
        return {"shipped": context.inputs.content["order"]}


def events() -> Graph:
    """announce -> work1 -> work2, and announce's "order" events -> ship (once per event)."""
    announce, work1, work2, ship = Announce(id="announce"), Work(id="work1"), Work(id="work2"), Ship(id="ship")
    announce >> work1 >> work2
    announce.on_event("order") >> ship
    return Graph(start=announce)


def build(name: str) -> Graph:
    return {"pipeline": pipeline, "chain": chain, "fan_out": fan_out, "mutating": mutating, "events": events}[name]()
