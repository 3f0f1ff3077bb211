"""Graphs with a node not safe to re-run (a payment), built the same way in tests and crash workers.

``Charge`` appends ``charge:<amount>`` to the side-effect file named by ``SPARK_CKPT_TEST_EFFECTS``:
the payment a re-run would make twice. Every node also appends ``<key>:<visit>`` to the calls file
(``graphs.record``). ``SPARK_CKPT_TEST_CRASH="<key>:<visit>:before|after"`` SIGKILLs the process inside
that visit, before or after its side effect; ``SPARK_CKPT_TEST_FAIL="<key>:<visit>"`` raises there, as
``SPARK_CKPT_TEST_DECLINE="<amount>"`` does in the charge of that amount.

``SPARK_CKPT_TEST_MARK`` says how the charge node is marked: "class" (the default: the decorated
``Charge`` class), "method" (``process`` decorated in the class body), "instance", "bound" (the
instance's bound ``process``), "config" (named in ``CheckpointConfig.unsafe_nodes``: ``config_for``),
or "none".
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from spark.graphs import Graph
from spark.nodes import Node

from graphs import record
from crash_cues import die
from spark_ckpt import CheckpointConfig, not_safe_to_rerun


def side_effect(entry: str) -> None:
    path = os.environ.get("SPARK_CKPT_TEST_EFFECTS")
    if path:
        with open(path, "a") as fh:
            fh.write(entry + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def effects() -> list[str]:
    path = os.environ.get("SPARK_CKPT_TEST_EFFECTS")
    return open(path).read().split() if path and os.path.exists(path) else []


def cue(node: Node, visit: int, when: str) -> None:
    if os.environ.get("SPARK_CKPT_TEST_CRASH") == f"{node.id}:{visit}:{when}":
        die()
    if when == "before" and os.environ.get("SPARK_CKPT_TEST_FAIL") == f"{node.id}:{visit}":
        raise RuntimeError(f"card declined in {node.id}")


class Prepare(Node):
    async def process(self, context):
        record(self, context)
        amount = (context.inputs.content or {}).get("amount", 42)
        await context.graph_state.set("amount", amount)
        return {"amount": amount}


class Note(Node):
    """An unmarked sibling of the payment: it may run again."""

    async def process(self, context):
        visit = record(self, context)
        cue(self, visit, "before")
        await context.graph_state.set("noted", True)
        side_effect(f"note:{visit}")
        return {"noted": True}


class _Charge(Node):
    async def process(self, context):
        visit = record(self, context)
        if os.environ.get("SPARK_CKPT_TEST_WAIT_FOR_NOTE"):  # a fan-out: the sibling completes first
            while not any(e.startswith("note:") for e in effects()):
                await asyncio.sleep(0.01)
        amount = context.inputs.content["amount"]
        cue(self, visit, "before")
        if os.environ.get("SPARK_CKPT_TEST_DECLINE") == str(amount):
            raise RuntimeError(f"card declined for {amount}")
        side_effect(f"charge:{amount}")
        cue(self, visit, "after")
        await context.graph_state.set("charged", amount)
        return {"charged": amount}


@not_safe_to_rerun
class Charge(_Charge):
    pass


class ChargeByMethod(_Charge):
    @not_safe_to_rerun
    async def process(self, context):
        return await super().process(context)


class Receipt(Node):
    async def process(self, context):
        visit = record(self, context)
        cue(self, visit, "before")
        charged = await context.graph_state.get("charged")
        await context.graph_state.set("receipt", f"paid {charged}")
        return {"receipt": f"paid {charged}"}


def charge_node(mark: str) -> Node:
    if mark == "class":
        return Charge(id="charge")
    if mark == "method":
        return ChargeByMethod(id="charge")
    node = _Charge(id="charge")
    if mark == "instance":
        not_safe_to_rerun(node)
    elif mark == "bound":
        not_safe_to_rerun(node.process)
    return node  # "config", "none"


def build(name: str, mark: str | None = None) -> Graph:
    """"line": prepare -> charge -> receipt; "fanout": prepare -> (charge, note), charge -> receipt."""
    mark = mark or os.environ.get("SPARK_CKPT_TEST_MARK", "class")
    prepare, charge, receipt = Prepare(id="prepare"), charge_node(mark), Receipt(id="receipt")
    prepare >> charge
    if name == "fanout":
        prepare >> Note(id="note")
    charge >> receipt
    return Graph(start=prepare)


def config_for(store: str, mark: str | None = None, **options: Any) -> CheckpointConfig:
    mark = mark or os.environ.get("SPARK_CKPT_TEST_MARK", "class")
    if mark == "config":
        options["unsafe_nodes"] = {"charge"}
    return CheckpointConfig(backend=store, **options)
