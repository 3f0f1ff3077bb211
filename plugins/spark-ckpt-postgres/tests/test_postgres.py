"""PostgresBackend against a real PostgreSQL server: conformance, leases across processes,
migrations, dropped connections and a server restart in the middle of a run."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from spark_ckpt.testing.leases import check_leases

from spark_ckpt.config import open_backend
from spark_ckpt.errors import BackendError, ConfigError, DuplicateCheckpointError
from spark_ckpt.model import CheckpointHeader
from spark_ckpt.testing.conformance import BackendConformance, make_header
from spark_ckpt_postgres import PostgresBackend
from spark_ckpt_postgres.backend import MIGRATIONS


class TestPostgresBackend(BackendConformance):
    @pytest.fixture(autouse=True)
    def _server(self, pg_dsn):
        self.dsn = pg_dsn

    def make_backend(self, tmp_path):
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        return PostgresBackend.from_url(f"{self.dsn}?schema={self.schema}")

    def reopen_backend(self, backend, tmp_path):
        return PostgresBackend.from_url(f"{self.dsn}?schema={backend.schema}")


def test_found_through_the_entry_point(pg_url):
    """The installed plugin makes postgresql:// and postgres:// URLs open a PostgresBackend."""
    backend = open_backend(pg_url)
    try:
        assert isinstance(backend, PostgresBackend)
    finally:
        backend.close()
    other = open_backend(pg_url.replace("postgresql://", "postgres://", 1))
    other.close()


def test_schema_is_migrated_once_by_concurrent_workers(pg_url):
    """Several backends opening one new schema at once: one migrates, none fails, version recorded."""
    opened, errors = [], []

    def open_one() -> None:
        try:
            opened.append(PostgresBackend.from_url(pg_url))
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert {b.schema_version() for b in opened} == {MIGRATIONS[-1][0]}
    finally:
        for backend in opened:
            backend.close()


def test_schema_from_a_newer_plugin_is_refused(pg_url):
    """A schema migrated by a newer plugin version is not written to by an older one."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        backend._run(lambda conn, _: conn.execute(
            f'INSERT INTO "{backend.schema}".spark_ckpt_migrations (version, name) VALUES (999, %s)', ["future"]
        ))
    finally:
        backend.close()
    with pytest.raises(BackendError, match="newer spark-ckpt-postgres"):
        PostgresBackend.from_url(pg_url)


@pytest.mark.parametrize(
    "query, message",
    [("schema=bad-name", "plain identifier"), ("pool_max_size=0", "pool sizes"), ("retries=x", "retries"),
     ("bogus_option=1", "bogus_option")],
)
def test_bad_options_are_config_errors(pg_dsn, query, message):
    """Invalid backend options raise ConfigError naming the problem, before touching the server."""
    with pytest.raises(ConfigError, match=message):
        PostgresBackend.from_url(f"{pg_dsn}?{query}")


def test_unreachable_server_is_a_clear_backend_error():
    """A server that is not there gives BackendError with the address and no password."""
    with pytest.raises(BackendError, match="127.0.0.1:1/") as info:
        PostgresBackend.from_url("postgresql://user:secret@127.0.0.1:1/db?pool_timeout=1")
    assert "secret" not in str(info.value)


def test_two_worker_processes_race_and_a_stalled_worker_is_fenced(pg_url, tmp_path):
    """Two real processes recover one execution: exactly one continues it, history does not fork.
    A worker frozen past its lease cannot write after another worker took the execution over."""
    check_leases(pg_url, tmp_path)


def test_dropped_connections_are_replaced(pg_url):
    """Connections killed server-side (pg_terminate_backend) are replaced; sync and async calls succeed."""
    backend = PostgresBackend.from_url(pg_url)
    killer = PostgresBackend.from_url(pg_url)

    def kill_others() -> int:
        return killer._run(lambda conn, _: conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"
        ).fetchone()[0])

    try:
        backend.put(make_header(0), b"before")
        assert kill_others() >= 1
        backend.put(make_header(1), b"after")
        assert [h.seq for h in backend.list()] == [1, 0]

        async def scenario() -> bytes:
            await backend.aput(make_header(2), b"async before")
            kill_others()
            await backend.aput(make_header(3), b"async after")
            blob = (await backend.aget("exec-1-3")).blob
            await backend.aclose()
            return blob

        assert asyncio.run(scenario()) == b"async after"
    finally:
        backend.close()
        killer.close()


def test_put_retried_after_commit_is_not_duplicated(pg_url):
    """A put whose first attempt committed (connection lost before the answer) succeeds on retry, once."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        header = make_header(0, size=3)
        backend.put(header, b"abc")
        # what the retry sees: its own row, same id and bytes -> success; different bytes -> duplicate
        backend._conflict(header, b"abc", backend._run(
            lambda conn, _: conn.execute(backend._existing_sql(), ["exec-1-0", "exec-1", 0]).fetchone()
        ), retried=True)
        with pytest.raises(DuplicateCheckpointError):
            backend._conflict(header, b"abd", backend._run(
                lambda conn, _: conn.execute(backend._existing_sql(), ["exec-1-0", "exec-1", 0]).fetchone()
            ), retried=True)
        assert len(backend.list()) == 1
    finally:
        backend.close()


def test_server_restart_mid_run_loses_no_acknowledged_checkpoint():
    """PostgreSQL restarted while a writer runs: the run completes, every acknowledged put is stored."""
    from spark_ckpt_postgres.testing import ThrowawayPostgres, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip("needs the PostgreSQL server binaries to restart a private cluster")
    cluster = ThrowawayPostgres().start()
    backend = PostgresBackend.from_url(f"{cluster.dsn}?pool_timeout=20")
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    total = 60
    started = threading.Event()

    def writer() -> None:
        try:
            for seq in range(total):
                header = CheckpointHeader(f"ck-{seq}", "g", "e", seq, time.time(), size=16)
                for _ in range(100):  # what a runtime does: retry the same checkpoint
                    try:
                        backend.put(header, f"checkpoint {seq:05d}".encode()[:16].ljust(16))
                        break
                    except BackendError:
                        time.sleep(0.1)
                else:
                    raise AssertionError(f"checkpoint {seq} never stored")
                acknowledged.append(header.checkpoint_id)
                if seq == 5:
                    started.set()
                time.sleep(0.02)
        except BaseException as exc:  # asserted below
            failures.append(exc)
            started.set()

    try:
        thread = threading.Thread(target=writer)
        thread.start()
        assert started.wait(60)
        cluster.restart()
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert failures == []
        stored = {h.checkpoint_id for h in backend.list()}
        assert set(acknowledged) <= stored
        assert len(acknowledged) == total
        assert [h.seq for h in sorted(backend.list(), key=lambda h: h.seq)] == list(range(total))
    finally:
        backend.close()
        cluster.destroy()


def test_checkpointed_graph_survives_a_server_restart_mid_run():
    """A real checkpointed Spark graph on PostgreSQL; the server restarts inside a node. The run fails
    with a clear BackendError or completes; either way recovery (if needed) ends with the uninterrupted
    run's result and state, and no acknowledged checkpoint is missing."""
    from spark.graphs import Graph
    from spark.nodes import Node

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark_ckpt.errors import NothingToRecoverError
    from spark_ckpt_postgres.testing import ThrowawayPostgres, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip("needs the PostgreSQL server binaries to restart a private cluster")
    cluster = ThrowawayPostgres().start()

    class Step(Node):
        async def process(self, context):
            count = await context.graph_state.get("count", 0) + 1
            await context.graph_state.set("count", count)
            if self.id == "s3" and not restarted:
                restarted.append(True)
                cluster.restart()  # the next checkpoint write meets a restarted server
            return {"count": count}

    def build():
        nodes = [Step(id=f"s{i}") for i in range(6)]
        for a, b in zip(nodes, nodes[1:]):
            a >> b
        return Graph(start=nodes[0])

    restarted: list[bool] = []
    url = f"{cluster.dsn}?pool_timeout=20"
    acknowledged: list[str] = []

    class Acks:
        from spark_ckpt import hookimpl

        @hookimpl
        def spark_ckpt_post_checkpoint(self, event):
            acknowledged.append(event.header.checkpoint_id)

    from spark_ckpt import plugins

    acks = Acks()
    plugins.register(acks)
    try:
        graph = checkpointed(build(), config=CheckpointConfig(backend=url), graph_id="restart")
        try:
            result = asyncio.run(graph.run({}))
        except BackendError:
            graph = checkpointed(build(), config=CheckpointConfig(backend=url), graph_id="restart")
            result = asyncio.run(graph.recover_and_continue())
        else:
            with pytest.raises(NothingToRecoverError):
                asyncio.run(graph.recover_and_continue())
        assert restarted and result.content == {"count": 6}
        assert graph.get_state_snapshot()["count"] == 6
        stored = {h.checkpoint_id for h in graph.list_checkpoints()}
        assert set(acknowledged) <= stored
        graph.close()
    finally:
        plugins.unregister(acks)
        cluster.destroy()
