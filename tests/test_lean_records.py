"""Graph records leave out the fields that hold their default, and read back exactly as before.

``engine.store_path.lean``: most records change little, so their empty lists, empty dicts and nulls
were a fifth of their bytes. The decoder puts the defaults back; records written with every field
(older versions) read the same.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.codec.convert import from_data, to_data
from spark_ckpt.engine.store_path import _LEFT_OUT_AT_DEFAULT, lean
from spark_ckpt.model import GraphCheckpoint


def _record(**fields) -> dict:
    """A record with every field at its default, then ``fields``."""
    data = to_data(from_data({"checkpoint_id": "ck-x-1", "seq": 1, "timestamp": 1.0, "graph_metadata": {
        "graph_id": "g", "graph_version": "v", "execution_id": "x"}}, GraphCheckpoint))
    data.update(fields)
    return data


def test_fields_at_their_default_are_left_out_and_come_back() -> None:
    data = _record()
    stored = lean(data)
    assert not set(_LEFT_OUT_AT_DEFAULT) & set(stored)
    assert {"checkpoint_id", "seq", "timestamp", "graph_metadata", "status", "version", "kind"} <= set(stored)
    assert from_data(stored, GraphCheckpoint) == from_data(data, GraphCheckpoint)


@pytest.mark.parametrize("field, value", [
    # equal to the default under ==, but not the same value: kept
    ("superstep", False), ("history_start", 0.0), ("partial_state", 0), ("result", False), ("result", {}),
    ("result", []), ("result", 0), ("run_input", ""), ("run_input", {}), ("current_node", ""),
    # not the default at all
    ("superstep", 3), ("partial_state", True), ("removed_state", ["k"]), ("graph_state", {"k": None}),
    ("base_seq", 0),
])
def test_a_value_that_only_looks_like_the_default_is_kept(field: str, value) -> None:
    stored = lean(_record(**{field: value}))
    assert field in stored and type(stored[field]) is type(value) and stored[field] == value


def test_the_default_values_are_the_records_own() -> None:
    # a default changed in GraphCheckpoint without this table would read a left-out field wrongly
    defaults = _record()
    for field, value in _LEFT_OUT_AT_DEFAULT.items():
        assert type(defaults[field]) is type(value) and defaults[field] == value, field


class Step(Node):
    async def process(self, context):
        await context.graph_state.set(self.id, {"seen": self.id})
        return {"step": self.id}


def _chain(n: int = 4) -> Graph:
    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0], initial_state={"kept": [1, 2]})


def test_stored_records_are_lean_and_read_back_whole(tmp_path) -> None:
    graph = checkpointed(_chain(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "c.db"),
                                                           strategy="iteration", interval=1), graph_id="lean")
    try:
        asyncio.run(graph.run({"go": 1}))
        headers = graph.backend.list(graph_id="lean")
        middle = sorted(headers, key=lambda h: h.seq)[3]  # a changes-only record
        blob = graph.backend.get(middle.checkpoint_id).blob
        payload = json.loads(blob[blob.index(b"}{") + 1:])
        assert payload["partial_state"] is True
        assert not {"failure", "result", "inflight", "skip_nodes", "run_input", "base_seq"} & set(payload)
        whole = graph.get_checkpoint(middle.checkpoint_id)
        assert whole.graph_state == {"kept": [1, 2], "s0": {"seen": "s0"}, "s1": {"seen": "s1"},
                                     "s2": {"seen": "s2"}}
        assert whole.failure is None and whole.result is None and whole.skip_nodes == []
    finally:
        graph.close()
