"""Graphs with Spark governance for the approval and human-input tests, built the same way in the test
process and in the worker processes (``approval_worker.py``).

``gated``: the ``pipeline`` of ``graphs.py`` (fetch -> transform loop -> publish -> report) with a
policy rule that requires an approval before ``publish`` runs. ``open``: the same graph without the
rule (what the run does once the gate is passed). ``asking``: s0 -> ask -> finish, where ``ask`` has a
scripted human policy that appends each question to the file ``SPARK_CKPT_TEST_ASKED``.
"""

from __future__ import annotations

import os
from typing import Any

import graphs
from spark.governance.policy import PolicyConstraint, PolicyEffect, PolicyRule
from spark.graphs import Graph
from spark.nodes import Node

GATE_RULE = PolicyRule(
    name="publish-needs-approval", effect=PolicyEffect.REQUIRE_APPROVAL, actions=["node:execute"],
    constraints=[PolicyConstraint(key="node.id", equals="publish")],
)


def gated(rule: bool = True) -> Graph:
    graph = graphs.pipeline()
    if not rule:
        return graph
    # the same nodes under a graph with the rule (Spark takes policies at construction)
    return Graph(start=graph.start, initial_state={"items": []}, policy_rules=[GATE_RULE])


class ScriptedHuman:
    """Answers every question with ``answer-<n>``; each question asked is appended to a file."""

    async def apply(self, node: Any, context: Any, result: Any) -> Any:
        path = os.environ["SPARK_CKPT_TEST_ASKED"]
        with open(path, "a") as fh:
            fh.write(f"{node.id}\n")
            fh.flush()
            os.fsync(fh.fileno())
        with open(path) as fh:
            asked = len(fh.read().splitlines())
        return {**result, "answer": f"answer-{asked}"}


class Ask(Node):
    async def process(self, context):
        graphs.record(self, context)
        await context.graph_state.set("drafted", True)
        return {"draft": "text"}


class Finish(Node):
    async def process(self, context):
        graphs.record(self, context)
        await context.graph_state.set("answer", context.inputs.content["answer"])
        return {"final": context.inputs.content["answer"]}


def asking() -> Graph:
    first, ask, finish = graphs.Step(id="s0"), Ask(id="ask"), Finish(id="finish")
    ask.human_policy = ScriptedHuman()
    first >> ask >> finish
    return Graph(start=first)


def build(name: str) -> Graph:
    return {"gated": gated, "open": lambda: gated(rule=False), "asking": asking}[name]()
