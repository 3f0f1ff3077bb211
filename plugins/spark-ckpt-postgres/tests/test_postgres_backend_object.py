"""The guide's ``PostgreSQLBackend(connection_string=..., table_name=...)`` object: given to a graph's
config, queried with ``await backend.list_checkpoints(...)`` and get/delete, several independent stores
in one schema by table name (each migrated on its own), and bad arguments refused before connecting."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from spark_ckpt import (
    CheckpointConfig, CheckpointInUseError, CheckpointNotFoundError, ConfigError, LeaseError, NothingToRecoverError,
    checkpointed,
)
from spark_ckpt.model import GraphCheckpoint
from spark_ckpt_postgres import PostgreSQLBackend, PostgresBackend
from spark_ckpt_postgres.backend import MIGRATIONS


def chain(n: int = 3, fail_at: str | None = None):
    """A Spark graph s0 -> s1 -> ... counting its visits in graph state; ``fail_at`` node raises once."""
    from spark.graphs import Graph
    from spark.nodes import Node

    failures = [fail_at] if fail_at else []

    class Step(Node):
        async def process(self, context):
            count = await context.graph_state.get("count", 0)
            await context.graph_state.set("count", count + 1)
            if self.id in failures:
                failures.remove(self.id)
                raise RuntimeError(f"injected failure in {self.id}")
            return {"step": self.id, "count": count + 1}

    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0])


@pytest.fixture
def schema(pg_dsn):
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_guide_postgresql_backend(pg_dsn, schema):
    postgres_backend = PostgreSQLBackend(connection_string=pg_dsn, table_name="graph_checkpoints", schema=schema)
    try:
        graph = checkpointed(chain(3), config=CheckpointConfig(backend=postgres_backend), graph_id="production_workflow")
        checkpoint = graph.create_checkpoint()
        asyncio.run(graph.run({}))

        async def query():
            recent = await postgres_backend.list_checkpoints(graph_id="production_workflow", limit=10)
            twin = await postgres_backend.alist_checkpoints(graph_id="production_workflow", limit=10)
            record = await postgres_backend.aget_checkpoint(recent[0].checkpoint_id)
            return recent, twin, record

        recent_checkpoints, twin, record = asyncio.run(query())
        assert recent_checkpoints == twin == postgres_backend.list(graph_id="production_workflow")
        assert recent_checkpoints[-1].checkpoint_id == checkpoint.checkpoint_id
        assert isinstance(record, GraphCheckpoint) and record.graph_state["count"] == 3
        assert record == postgres_backend.get_checkpoint(recent_checkpoints[0].checkpoint_id) == graph.get_checkpoint()
        assert asyncio.run(postgres_backend.adelete_checkpoint(recent_checkpoints[1].checkpoint_id)) is True
        assert postgres_backend.delete_checkpoint(recent_checkpoints[2].checkpoint_id) == True  # noqa: E712
        with pytest.raises(CheckpointNotFoundError):
            postgres_backend.get_checkpoint(recent_checkpoints[1].checkpoint_id)
        graph.close()
        assert len(postgres_backend.list_checkpoints()) == len(recent_checkpoints) - 2  # still open: ours
        with psycopg.connect(pg_dsn) as conn:
            names = {row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])}
        assert names == {"graph_checkpoints", "graph_checkpoints_executions", "graph_checkpoints_leases",
                         "graph_checkpoints_migrations"}
    finally:
        postgres_backend.close()


def test_table_names_keep_stores_in_one_schema_independent(pg_dsn, schema):
    first = PostgreSQLBackend(connection_string=pg_dsn, table_name="graph_checkpoints", schema=schema)
    second = PostgreSQLBackend(connection_string=pg_dsn, table_name="other_checkpoints", schema=schema)
    default = PostgresBackend.from_url(f"{pg_dsn}?schema={schema}")
    try:
        a = checkpointed(chain(3, fail_at="s1"), config=CheckpointConfig(backend=first), graph_id="etl")
        b = checkpointed(chain(3), config=CheckpointConfig(backend=second), graph_id="etl")
        with pytest.raises(RuntimeError):
            asyncio.run(a.run({}))
        asyncio.run(b.run({}))
        assert [h.status for h in first.executions(graph_id="etl")] == ["failed"]
        assert [h.status for h in second.executions(graph_id="etl")] == ["completed"]
        assert default.list_checkpoints() == []
        with pytest.raises(CheckpointInUseError):
            first.delete_checkpoint(first.list_checkpoints()[-1].checkpoint_id)
        with pytest.raises(NothingToRecoverError):
            asyncio.run(b.recover_and_continue())
        assert asyncio.run(a.recover_and_continue()).content == {"step": "s2", "count": 3}

        first.acquire_lease("ex-shared", "worker-1", 60)
        second.acquire_lease("ex-shared", "worker-2", 60)
        with pytest.raises(LeaseError):
            first.acquire_lease("ex-shared", "worker-3", 60)
        assert first.schema_version() == second.schema_version() == default.schema_version() == MIGRATIONS[-1][0]
    finally:
        for backend in (first, second, default):
            backend.close()


def test_database_backend_name_with_a_postgresql_url(pg_dsn, schema):
    config = CheckpointConfig(backend="database", path=f"{pg_dsn}?schema={schema}&table_name=graph_checkpoints")
    backend = config.open_backend()
    try:
        assert isinstance(backend, PostgreSQLBackend)
        assert backend.table_name == "graph_checkpoints" and backend.schema == schema
    finally:
        backend.close()


def test_describe_and_config_repr_never_show_the_password(pg_dsn, schema):
    backend = PostgreSQLBackend(connection_string=pg_dsn, table_name="graph_checkpoints", schema=schema)
    try:
        config = CheckpointConfig(backend=backend)
        assert config.backend_url() == backend.describe()
        assert "table graph_checkpoints" in backend.describe() and schema in backend.describe()
        assert repr(backend) in repr(config)
    finally:
        backend.close()
    with pytest.raises(ConfigError) as caught:  # refused before connecting: the password is not echoed
        PostgreSQLBackend(connection_string="postgresql://app:hunter2@db.invalid/x", table_name="bad name")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "needs a connection string"),
    ({"connection_string": "postgresql://h/db", "table_name": "graph_leases"}, "share tables"),
    ({"connection_string": "postgresql://h/db", "table_name": "x" * 41}, "plain identifier"),
    ({"connection_string": "postgresql://h/db", "tablename": "x"}, "unexpected keyword argument 'tablename'"),
    ({"connection_string": "postgresql://h/db", "compression": "lz4"}, "not a compression"),
    ({"connection_string": "postgresql://h/db?pool_max_size=2"}, "as PostgreSQLBackend arguments"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PostgreSQLBackend(**kwargs)
