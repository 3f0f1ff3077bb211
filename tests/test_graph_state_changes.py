"""Checkpoints that store only the state that changed, against seeded random changes.

One node loops, and each visit changes graph state in ways drawn from a seeded generator: values set
and replaced (including 1, 1.0 and True, which compare equal), keys deleted and set again, lists and
dicts changed in place without ``set()``, lists appended to, shortened, or changed in the middle. The
run crosses a whole checkpoint (one every 64). Every checkpoint must read back as the state the run
had at that point, and recovery after a failure must finish with the uninterrupted run's state.
"""

from __future__ import annotations

import asyncio
import json
import os
import random

import pytest
from spark.graphs import Graph
from spark.graphs.hooks import GraphLifecycleEvent
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.engine.frontier import FRONTIER_AFTER_VISITS

VISITS = 70
KEYS = ["a", "b", "c", "d", "e"]


def change(state: dict, rng: random.Random, step: int) -> list[tuple[str, str]]:
    """Apply 1-3 random changes to the raw state dict (as a node holding it would); returns what it did."""
    done = []
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(KEYS)
        value = state.get(key)
        kind = rng.choice(["scalar", "flip", "list", "dict", "append", "extend_set", "shorten", "middle",
                           "dict_in_place", "delete"])
        if kind == "scalar":
            state[key] = rng.choice([step, f"s{step}", None, step / 7, "x" * rng.randint(0, 50)])
        elif kind == "flip":
            state[key] = rng.choice([1, 1.0, True])
        elif kind == "list":
            state[key] = [step, [step], {"n": step}]
        elif kind == "dict":
            state[key] = {"n": step, "items": [step]}
        elif kind == "append" and isinstance(value, list):
            value.append({"at": step})  # in place, no set()
        elif kind == "extend_set" and isinstance(value, list):
            state[key] = value + [step, f"t{step}"]
        elif kind == "shorten" and isinstance(value, list) and value:
            del value[rng.randrange(len(value)):]
        elif kind == "middle" and isinstance(value, list) and value:
            value[rng.randrange(len(value))] = f"m{step}"
        elif kind == "dict_in_place" and isinstance(value, dict):
            value[f"k{step % 3}"] = step
        elif kind == "delete":
            state.pop(key, None)
        else:
            continue
        done.append((key, kind))
    return done


class Churn(Node):
    def __init__(self, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    async def process(self, context):
        step = (context.inputs.content or {}).get("step", 0)
        rng = random.Random(self.seed * 1000 + step)  # the same changes in every process and on recovery
        change(context.graph_state.get_raw(), rng, step)
        if os.environ.get("SPARK_CKPT_TEST_FAIL") == f"churn:{step}":
            raise RuntimeError("injected failure")
        return {"step": step + 1, "done": step + 1 >= VISITS}


def churn_graph(seed: int) -> Graph:
    node = Churn(seed, id="churn")
    node.on(done=False) >> node
    return Graph(start=node, initial_state={"a": [], "b": {}, "c": 0, "big": "z" * 10_000})


def canonical(state: dict) -> str:
    return json.dumps(state, sort_keys=True)  # 1, 1.0 and true stay apart


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_checkpoint_reads_back_as_the_state_the_run_had(tmp_path, seed) -> None:
    graph = checkpointed(churn_graph(seed), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "c.db")),
                         graph_id="churn")
    seen: dict[int, str] = {}
    graph.graph.register_hook(GraphLifecycleEvent.AFTER_ITERATION,
                              lambda ctx: seen.setdefault(ctx.iteration_index, canonical(ctx.graph.state.get_snapshot())))
    asyncio.run(graph.run({}))
    headers = sorted(graph.list_checkpoints(), key=lambda h: h.seq)
    assert len(headers) == VISITS + 1  # the start record and one per superstep
    assert sum(h.size > 10_000 for h in headers) <= 4  # the large value: start, the next, the 64th, final
    for offset, header in enumerate(reversed(headers[1:])):
        record = graph.get_checkpoint(offset=offset)
        assert record.seq == header.seq
        assert canonical(record.graph_state) == seen[record.superstep], f"seq {record.seq}"


@pytest.mark.parametrize("seed,fail_at", [(1, 5), (2, 40), (3, 66), (4, 69)])
def test_recovery_after_a_failure_ends_with_the_uninterrupted_state(tmp_path, monkeypatch, seed, fail_at) -> None:
    uninterrupted = churn_graph(seed)
    asyncio.run(uninterrupted.run({}))
    graph = checkpointed(churn_graph(seed), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "r.db")),
                         graph_id="churn")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", f"churn:{fail_at}")
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    asyncio.run(graph.recover_and_continue())
    report = graph.last_recovery
    if fail_at < FRONTIER_AFTER_VISITS:
        assert len(report.replayed) == fail_at and report.from_frontier is None
    else:  # a long journal: continued from the failure record's frontier, nothing replayed
        assert report.replayed == [] and report.from_frontier == "churn"
    assert canonical(graph.get_state_snapshot()) == canonical(uninterrupted.state.get_snapshot())
