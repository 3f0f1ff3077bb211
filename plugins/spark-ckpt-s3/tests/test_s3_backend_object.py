"""The guide's ``S3Backend(bucket=..., prefix=..., region=...)`` object: given to a graph's config, queried
with ``await backend.list_checkpoints(...)`` and get/delete, stores under different prefixes independent,
its ``compression`` choice applied by the config, and bad arguments refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from spark_ckpt import CheckpointConfig, CheckpointNotFoundError, ConfigError, checkpointed
from spark_ckpt.codec.envelope import unpack
from spark_ckpt.model import GraphCheckpoint
from spark_ckpt_s3 import S3Backend

BUCKET = "spark-ckpt-tests"


def graph(n: int = 3, big: bool = False):
    """A Spark graph s0 -> s1 -> ... counting its visits in graph state (``big``: a large state value)."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class Step(Node):
        async def process(self, context):
            count = await context.graph_state.get("count", 0)
            await context.graph_state.set("count", count + 1)
            if big:
                await context.graph_state.set("report", "line of the report\n" * 2000)
            return {"step": self.id, "count": count + 1}

    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


@pytest.fixture
def make(s3_endpoint):
    opened = []

    def build(prefix: str | None = None, **kwargs):
        backend = S3Backend(bucket=BUCKET, prefix=prefix or f"workflows-{uuid.uuid4().hex[:12]}/", region="us-east-1",
                            endpoint_url=s3_endpoint, create_bucket=True, **kwargs)
        opened.append(backend)
        return backend

    yield build
    for backend in opened:
        backend.close()


def test_guide_s3_backend(make):
    s3_backend = make()
    wrapped = checkpointed(graph(3), config=CheckpointConfig(backend=s3_backend), graph_id="production_workflow")
    checkpoint = wrapped.create_checkpoint()
    asyncio.run(wrapped.run({}))

    async def query():
        recent = await s3_backend.list_checkpoints(graph_id="production_workflow", limit=10)
        return recent, await s3_backend.aget_checkpoint(recent[0].checkpoint_id)

    recent, record = asyncio.run(query())
    assert recent == s3_backend.list(graph_id="production_workflow")
    assert recent[-1].checkpoint_id == checkpoint.checkpoint_id
    assert isinstance(record, GraphCheckpoint) and record.graph_state["count"] == 3
    assert record == s3_backend.get_checkpoint(recent[0].checkpoint_id) == wrapped.get_checkpoint()
    assert asyncio.run(s3_backend.adelete_checkpoint(recent[1].checkpoint_id)) is True
    assert s3_backend.delete_checkpoint(recent[2].checkpoint_id) == True  # noqa: E712
    with pytest.raises(CheckpointNotFoundError):
        asyncio.run(s3_backend.aget_checkpoint(recent[1].checkpoint_id))
    wrapped.close()
    assert len(s3_backend.list_checkpoints()) == len(recent) - 2  # closing the graph left the object open


def test_prefixes_keep_stores_independent_and_compression_applies(make):
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    plain, compressed = make(f"{shared}/a/"), make(f"{shared}/b/", compression=True)
    asyncio.run(checkpointed(graph(2, big=True), backend=plain, graph_id="g").run({}))
    asyncio.run(checkpointed(graph(2, big=True), backend=compressed, graph_id="g").run({}))
    a, b = plain.list_checkpoints(graph_id="g"), compressed.list_checkpoints(graph_id="g")
    assert len(a) == len(b) == 3
    assert {h.checkpoint_id for h in a}.isdisjoint(h.checkpoint_id for h in b)
    layers = lambda backend, h: [layer["name"] for layer in unpack(backend.get(h.checkpoint_id).blob).layers]  # noqa: E731
    assert "gzip" in layers(compressed, b[0]) and "gzip" not in layers(plain, a[0])
    assert compressed.get_checkpoint(b[0].checkpoint_id).graph_state == plain.get_checkpoint(a[0].checkpoint_id).graph_state


@pytest.mark.parametrize("kwargs, match", [
    ({}, "missing a required argument: 'bucket'"),
    ({"bucket": BUCKET, "prefx": "x/"}, "unexpected keyword argument 'prefx'"),
    ({"bucket": BUCKET, "prefix": 3}, "prefix must be a string"),
    ({"bucket": BUCKET, "compression": "lz4"}, "not a compression"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S3Backend(**kwargs)
