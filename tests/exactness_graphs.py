"""Spark graphs for the recovery-exactness tests (tests/test_recovery_exactness.py).

Built the same way in the test process (bare reference runs) and in tests/exactness_worker.py
(checkpointed runs). This module imports Spark only, never spark_ckpt.

Every node visit appends ``"<node>:<visit>"`` (fsynced) to the file named by
``SPARK_CKPT_TEST_CALLS``, so the test can count real executions across processes. Cues, all from
the environment:

  SPARK_CKPT_TEST_CRASH=node:visit     SIGKILL this process inside that visit (after it changed state)
  SPARK_CKPT_TEST_FAIL=node:visit      raise RuntimeError inside that visit
  SPARK_CKPT_TEST_SLEEP=seconds        every Step visit sleeps that long (asyncio.sleep)
  SPARK_CKPT_TEST_PAUSE=node:visit     that visit creates ``$SPARK_CKPT_TEST_PAUSED`` and waits until
                                       ``$SPARK_CKPT_TEST_GO`` exists
  SPARK_CKPT_TEST_HASHES=left=1,right=2   hashes of the two fan-out branches: they decide the order
                                       of the superstep ``set`` Spark runs them from, and so the order
                                       in which the join receives their outputs
  SPARK_CKPT_TEST_INPUTS=path          the join appends ``"join:<visit>:<branch>"`` there
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from spark.graphs import Graph
from spark.nodes import Node

from graphs import CALLS, record  # noqa: F401  (the same execution record as the other test graphs)

#: size of the value the "big" node of ``bigchain`` adds to graph state
BIG_BYTES = 6 * 1024 * 1024


def _append_fsynced(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def maybe_crash(node: Node, visit: int) -> None:
    if os.environ.get("SPARK_CKPT_TEST_CRASH") == f"{node.id}:{visit}":
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail(node: Node, visit: int) -> None:
    if os.environ.get("SPARK_CKPT_TEST_FAIL") == f"{node.id}:{visit}":
        raise RuntimeError(f"injected failure in {node.id}")


async def maybe_pause(node: Node, visit: int) -> None:
    if os.environ.get("SPARK_CKPT_TEST_PAUSE") != f"{node.id}:{visit}":
        return
    _append_fsynced(os.environ["SPARK_CKPT_TEST_PAUSED"], f"{node.id}:{visit}")
    go = os.environ["SPARK_CKPT_TEST_GO"]
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.id}:{visit} waited 60 s for {go}")
        await asyncio.sleep(0.02)


class Step(Node):
    """One link of a chain: counts, remembers its visit and the input it received."""

    async def process(self, context):
        visit = record(self, context)
        await maybe_pause(self, visit)
        pause = float(os.environ.get("SPARK_CKPT_TEST_SLEEP", "0") or 0)
        if pause:
            await asyncio.sleep(pause)
        count = await context.graph_state.get("count", 0)
        await context.graph_state.set("count", count + 1)
        await context.graph_state.set(f"seen_{self.id}", visit)
        content = context.inputs.content
        await context.graph_state.set(f"got_{self.id}", content if isinstance(content, dict) else {"raw": str(content)})
        maybe_crash(self, visit)
        maybe_fail(self, visit)
        return {"step": self.id, "count": count + 1}


class Big(Step):
    """A Step that also adds a value of ``BIG_BYTES`` to graph state."""

    async def process(self, context):
        out = await super().process(context)
        await context.graph_state.set("blob", "b" * BIG_BYTES)
        return out


def chain(n: int = 8) -> Graph:
    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


def bigchain() -> Graph:
    """s0 -> s1 -> big -> s3 -> s4: the third superstep adds a large value to graph state."""
    nodes = [Step(id="s0"), Step(id="s1"), Big(id="big"), Step(id="s3"), Step(id="s4")]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


# -- fan-in ------------------------------------------------------------------------------------------
class Split(Node):
    async def process(self, context):
        visit = record(self, context)
        await context.graph_state.set("split", True)
        maybe_crash(self, visit)
        return {"value": (context.inputs.content or {}).get("value", 1)}


class Branch(Node):
    """A branch whose hash comes from the environment, so the test decides which of the two branches
    Spark's superstep ``set`` yields first (and so which output reaches the join first). Equality
    stays identity (object's ``__eq__``)."""

    def __hash__(self) -> int:
        spec = os.environ.get("SPARK_CKPT_TEST_HASHES")
        if not spec:
            return object.__hash__(self)
        return int(dict(item.split("=") for item in spec.split(","))[self.id])

    async def process(self, context):
        visit = record(self, context)
        factor = {"left": 2, "right": 3}[self.id]
        value = context.inputs.content["value"] * factor
        await context.graph_state.set(self.id, value)
        maybe_crash(self, visit)
        return {"value": value, "from": self.id}


class Join(Node):
    """A plain node with two parents: Spark runs it once per parent output."""

    async def process(self, context):
        visit = record(self, context)
        source = context.inputs.content["from"]
        path = os.environ.get("SPARK_CKPT_TEST_INPUTS")
        if path:
            _append_fsynced(path, f"join:{visit}:{source}")
        seen = await context.graph_state.get("joined", [])
        await context.graph_state.set("joined", sorted(seen + [source]))
        total = await context.graph_state.get("total", 0)
        await context.graph_state.set("total", total + context.inputs.content["value"])
        maybe_crash(self, visit)
        return {"joined": await context.graph_state.get("joined"), "total": await context.graph_state.get("total")}


def fan_in() -> Graph:
    """split -> (left, right) in one superstep -> join (visited once per branch output)."""
    split, left, right, join = Split(id="split"), Branch(id="left"), Branch(id="right"), Join(id="join")
    split >> left
    split >> right
    left >> join
    right >> join
    return Graph(start=split)


# -- an agent node ------------------------------------------------------------------------------------------
class Prepare(Node):
    async def process(self, context):
        record(self, context)
        return {"text": "task:3"}


def agent_chain() -> Graph:
    """prepare -> agent "bot" (scripted model: 4 LLM calls, 3 tool calls) -> after (a Step).

    The scripted model and tool (tests/agent_workers/scripted.py) count every real LLM and tool call
    in ``$SPARK_CKPT_TEST_COUNTER`` and SIGKILL on ``$SPARK_CKPT_TEST_KILL``."""
    from spark.agents import Agent, AgentConfig

    from agent_workers.scripted import ScriptedModel, step

    prepare, after = Prepare(id="prepare"), Step(id="after")
    agent = Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step], prompt_template="{{ text }}"))
    prepare >> agent
    agent >> after
    return Graph(start=prepare)


def build(name: str) -> Graph:
    return {"chain": chain, "chain6": lambda: chain(6), "chain10": lambda: chain(10), "bigchain": bigchain,
            "fan_in": fan_in, "agent_chain": agent_chain}[name]()
