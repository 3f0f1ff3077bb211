"""Journal entries are encoded once, the first time a record holds them, and kept as that JSON.

Whole records (the start, final and every 64th) hold the whole journal; without this each of them
encoded every visit again. Outputs that need tags (tuples, datetimes, bytes) must come back exactly
from every kind of record, and a recovery across whole records must reproduce the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.engine.record_builder import FULL_HISTORY_EVERY

STEPS = FULL_HISTORY_EVERY + 6  # past one whole record in the middle of the run


def output_of(n: int) -> dict:
    return {"n": n, "pair": (n, str(n)), "at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(n),
            "raw": bytes([n % 256]), "done": n >= STEPS}


class Loop(Node):
    fail_at: int | None = None

    async def process(self, context):
        n = await context.graph_state.get("n", 0) + 1
        await context.graph_state.set("n", n)
        if n == Loop.fail_at:
            Loop.fail_at = None
            raise RuntimeError(f"failed at {n}")
        return output_of(n)


def build(path) -> object:
    loop = Loop(id="loop")
    loop.on(done=False) >> loop
    return checkpointed(Graph(start=loop), config=CheckpointConfig(
        backend="sqlite", path=str(path), strategy="iteration", interval=1, retention_count=None), graph_id="enc")


def test_tagged_outputs_come_back_from_whole_and_changes_only_records(tmp_path) -> None:
    graph = build(tmp_path / "c.db")
    try:
        asyncio.run(graph.run({"go": 1}))
        final = graph.get_checkpoint()
        assert [v.output["content"] for v in final.execution_history] == [output_of(n) for n in range(1, STEPS + 1)]
        # a whole record in the middle, and a changes-only one after it, made whole
        for seq in (FULL_HISTORY_EVERY + 2, FULL_HISTORY_EVERY + 4):
            header = next(h for h in graph.list_checkpoints() if h.seq == seq)
            record = graph.get_checkpoint(header.checkpoint_id)
            assert [v.output["content"] for v in record.execution_history] == [
                output_of(n) for n in range(1, len(record.execution_history) + 1)]
    finally:
        graph.close()


@pytest.mark.parametrize("fail_at", [FULL_HISTORY_EVERY - 1, FULL_HISTORY_EVERY + 3])
def test_a_recovery_across_whole_records_ends_as_the_uninterrupted_run(tmp_path, fail_at: int) -> None:
    graph = build(tmp_path / "c.db")
    Loop.fail_at = fail_at
    try:
        with pytest.raises(RuntimeError):
            asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    Loop.fail_at = None
    recovered = build(tmp_path / "c.db")
    try:
        result = asyncio.run(recovered.recover_and_continue())
        assert result.content == output_of(STEPS)
        final = recovered.get_checkpoint()
        assert [v.output["content"] for v in final.execution_history] == [output_of(n) for n in range(1, STEPS + 1)]
    finally:
        recovered.close()
