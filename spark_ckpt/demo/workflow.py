"""The demo's workflow: a Spark graph with a loop and a conditional branch, and its side file.

::

    fetch -> transform --(done=False)--> transform            (one pass per batch item)
                       --(done=True, needs_review=True)--> review  -> report
                       --(done=True, needs_review=False)-> publish -> report

Invariants: every real execution of a node's ``process()`` appends a ``start`` line to the side file
before it does its work and an ``end`` line after, each written and closed at once, so the lines
survive a SIGKILL; a line names the process, the node and its visit (transform's visit is the item
it works on). ``crash_at`` kills the process inside that transform pass after half of the pass's
state changes, which recovery must drop (they were never checkpointed). Spark is imported only when
a graph is built.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

GRAPH_ID = "demo"
DEMO_INPUT = {"items": [3, 1, 4, 1, 5, 9, 2, 6], "review_threshold": 100}


def _journal(path: str | None, node: str, visit: int, phase: str) -> None:
    """Append one line per real ``process()`` phase; survives SIGKILL (written before the kill)."""
    if path is None:
        return
    line = json.dumps({"pid": os.getpid(), "node": node, "visit": visit, "phase": phase})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def build_graph(side_file: str | None = None, crash_at: int | None = None) -> Any:
    """The demo graph. ``crash_at`` (0-based transform pass) makes the process SIGKILL itself there."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class DemoNode(Node):
        async def visit(self, context: Any) -> Any:
            raise NotImplementedError

        async def process(self, context: Any) -> Any:
            index = await self.visit_index(context)
            _journal(side_file, self.id, index, "start")
            output = await self.visit(context)
            _journal(side_file, self.id, index, "end")
            return output

        async def visit_index(self, context: Any) -> int:
            return 0  # visited once per run

    class Fetch(DemoNode):
        async def visit(self, context: Any) -> Any:
            items = list(context.inputs.content["items"])
            state = context.graph_state
            await state.set("items", items)
            await state.set("review_threshold", context.inputs.content["review_threshold"])
            await state.set("position", 0)
            await state.set("total", 0)
            await state.set("squares", [])
            return {"fetched": len(items)}

    class Transform(DemoNode):
        async def visit_index(self, context: Any) -> int:
            return await context.graph_state.get("position", 0)

        async def visit(self, context: Any) -> Any:
            state = context.graph_state
            position = await state.get("position")
            items = await state.get("items")
            square = items[position] * items[position]
            squares = list(await state.get("squares")) + [square]
            await state.set("squares", squares)
            if crash_at is not None and position == crash_at:
                # Half of this pass's state changes are made, then the process dies: recovery must not
                # keep them (they were never checkpointed) and must run this pass again.
                os.kill(os.getpid(), signal.SIGKILL)
            total = await state.get("total") + square
            await state.set("total", total)
            await state.set("position", position + 1)
            done = position + 1 >= len(items)
            return {
                "done": done,
                "needs_review": total > await state.get("review_threshold"),
                "total": total,
            }

    class Review(DemoNode):
        async def visit(self, context: Any) -> Any:
            total = context.inputs.content["total"]
            await context.graph_state.set("reviewed", True)
            return {"total": total, "route": "review", "approved": total < 1000}

    class Publish(DemoNode):
        async def visit(self, context: Any) -> Any:
            return {"total": context.inputs.content["total"], "route": "publish", "approved": True}

    class Report(DemoNode):
        async def visit(self, context: Any) -> Any:
            squares = await context.graph_state.get("squares")
            content = context.inputs.content
            report = f"{len(squares)} items, sum of squares {content['total']}, via {content['route']}"
            await context.graph_state.set("report", report)
            return {"report": report, "approved": content["approved"]}

    fetch, transform = Fetch(id="fetch"), Transform(id="transform")
    review, publish, report = Review(id="review"), Publish(id="publish"), Report(id="report")
    fetch >> transform
    transform.on(done=False) >> transform
    transform.on(done=True, needs_review=True) >> review
    transform.on(done=True, needs_review=False) >> publish
    review >> report
    publish >> report
    return Graph(start=fetch)


def content_of(result: Any) -> Any:
    """What a graph run returned, unwrapped from Spark's ``NodeMessage``."""
    return getattr(result, "content", result)

